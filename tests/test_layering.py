"""The layering PRODUCT.md asks for, read from the code (every import, function-level ones included):

    CLI, demo, deploy  ->  apps  ->  operators  ->  core (oncoplan.*)
                           training  ->  core

The core imports only the core; operators import the core; apps import operators and the core;
training imports the core (never operators, apps, deploy or the CLI); nothing below the top imports
the CLI or deploy."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "oncoplan": "oncoplan",
    "training": "oncoplan.training",
    "operators": "oncoplan.operators",
    "apps": "oncoplan.apps",
    "deploy": "oncoplan.deploy",
}
TOP = ("oncoplan.cli", "oncoplan.demo", "oncoplan.monai_deploy", "oncoplan.__main__", "oncoplan.deploy")


def layer(module: str) -> str:
    if module.startswith(TOP):
        return "top"
    for name in ("training", "operators", "apps"):
        if module == f"oncoplan.{name}" or module.startswith(f"oncoplan.{name}."):
            return name
    return "core"


# What each layer may import (besides itself and third-party code).
ALLOWED = {
    "core": {"core"},
    "operators": {"core", "operators"},
    "apps": {"core", "operators", "apps"},
    "training": {"core", "training"},
    "top": {"core", "operators", "apps", "training", "top"},
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The OncoPlan modules `module` imports (`from oncoplan import cli` imports the module oncoplan.cli)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found & known


def upward_edges() -> list[str]:
    edges, known = [], modules()
    for module, path in sorted(known.items()):
        for target in sorted(imported(module, path, set(known))):
            if layer(target) not in ALLOWED[layer(module)]:
                edges.append(f"{module} ({layer(module)}) -> {target} ({layer(target)})")
    return edges


def test_no_module_imports_a_layer_above_its_own() -> None:
    edges = upward_edges()
    assert not edges, "upward imports:\n" + "\n".join(edges)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule itself: an operator importing training, or the core importing an operator, is caught."""
    assert layer("oncoplan.training.synth.liver") == "training" and layer("oncoplan.planner.search") == "core"
    assert "training" not in ALLOWED["operators"] and "operators" not in ALLOWED["core"]
    assert "top" not in ALLOWED["apps"] and "operators" not in ALLOWED["training"]


# Config files are code too: a bundle config's `$import` runs when the config is parsed. What the apps parse
# of the shipped bundles (each TACE bundle's inference.json with its planner.json overlay, the CTV bundle's
# inference.json) must import no training module; the batch-job items that need one (datalists, writers,
# the dynamics bundle's `run`) name it as a `_target_`, imported only when `monai.bundle run` builds them.
RUNTIME_LOAD = """
import sys
from oncoplan.ctv.predict import CTVPredictor
from oncoplan.planner.models import load_models
from oncoplan.planner.segmenter import StudySegmenter
from oncoplan.runtime.bundles import shipped_bundles

b = shipped_bundles()
world, scorer, preprocessing = load_models(b / "tace_dynamics", b / "tace_assistant", b / "tace_survival")
StudySegmenter(b / "tace_assistant", world.assistant_forward, 0.5)
CTVPredictor(b / "ctv_llmseg")
print("\\n".join(sorted(m for m in sys.modules if m.startswith(("oncoplan.training", "oncoplan.operators")))))
"""


def test_loading_the_shipped_bundles_as_the_apps_do_imports_no_training_module() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_LOAD], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [], "imported at run time:\n" + done.stdout

"""The distribution: one namespace over the card's folders, a CLI with --help everywhere."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["oncoplan.training", "oncoplan.apps", "oncoplan.operators", "oncoplan.deploy"])
def test_card_folders_import_under_one_namespace(module: str) -> None:
    mod = importlib.import_module(module)
    folder = module.split(".")[1]
    assert Path(mod.__file__).resolve().parent == ROOT / folder


def test_no_bare_top_level_modules_installed() -> None:
    for bare in ("training", "operators", "apps", "deploy"):
        spec = importlib.util.find_spec(bare)
        assert spec is None or ROOT.as_posix() in str(spec.origin or spec.submodule_search_locations), bare


def test_card_layout_exists() -> None:
    for folder in ("bundles", "apps", "operators", "training", "deploy", "tests"):
        assert (ROOT / folder).is_dir(), folder
    for f in ("pyproject.toml", "README.md", ".ci/run", "run"):
        assert (ROOT / f).is_file(), f


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oncoplan", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args", [[], ["synth"], ["demo"]])
def test_help_everywhere(args: list[str]) -> None:
    out = _cli(*args, "--help")
    assert out.returncode == 0
    assert "usage: oncoplan" in out.stdout


def test_top_level_help_lists_commands_and_research_use() -> None:
    out = " ".join(_cli("--help").stdout.split())
    assert "synth" in out and "demo" in out
    assert "RESEARCH USE ONLY" in out

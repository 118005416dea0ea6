"""One harness for the four bundle test files: each bundle's test sizes and arguments, its
`python -m monai.bundle run`, its tiny trained model (trained once per test session, whichever file asks
first), and the checks every bundle passes (written once, in tests/test_bundles.py, over `BUNDLES`)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .helpers import run_bundle

ROOT = Path(__file__).resolve().parents[1]
METADATA_SCHEMA = "monai/meta_schema_20240725.json"  # under ../shared
# MONAI's trt_compile logs this when it leaves the network as it is (no GPU or no TensorRT).
TRT_NO_OP = "trt_compile() has no effect"

Paths = dict[str, Path]  # a trained bundle's folders: tmp, models, cache, and data (its training data)


@dataclass(frozen=True)
class Bundle:
    """A bundle as the tests run it. `train(paths, ckpt_dir, output_dir, epochs)` and
    `infer(paths, output_dir)` give the `monai.bundle run` arguments after --config_file."""

    name: str
    data: Callable[[pytest.FixtureRequest], Path]  # the training data, from the session's fixtures
    train: Callable[[Paths, Path, Path, str], list[str]]
    infer: Callable[[Paths, Path], list[str]]
    epochs: str  # of the session's trained model
    ddp_epochs: str  # of the 2-rank gloo run
    master_port: int  # of the 2-rank run: one per bundle, so bundles can run side by side
    outputs: str  # a glob that inference (TensorRT overlay included) writes under its output folder

    @property
    def root(self) -> Path:
        return ROOT / "bundles" / self.name

    def configs(self, *names: str) -> str:
        """A config list of this bundle's configs/ files, as `--config_file` takes it."""
        return "[" + ",".join(f"'{self.root / 'configs' / n}'" for n in names) + "]"

    def run(self, args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> str:
        """`python -m monai.bundle run` of this bundle (fails on a non-zero exit); its log."""
        return run_bundle(self.root, args, launcher, timeout)

    def run_inference(self, paths: Paths, out: str, *configs: str, extra: tuple[str, ...] = ()) -> str:
        """The config list `configs` on the trained model, writing into paths["tmp"] / `out`; its log."""
        return self.run(["--config_file", self.configs(*configs), *self.infer(paths, paths["tmp"] / out), *extra])

    def trained(self, request: pytest.FixtureRequest) -> Paths:
        """configs/train.json run once per session at the test sizes (the files share it); a failed run
        fails every test that asks, without running again (as a module fixture's error does)."""
        if self.name not in _TRAINED:
            tmp = request.getfixturevalue("tmp_path_factory").mktemp(self.name)
            paths = {"tmp": tmp, "models": tmp / "models", "cache": tmp / "cache", "data": self.data(request)}
            args = [
                "--config_file",
                "configs/train.json",
                *self.train(paths, paths["models"], tmp / "eval", self.epochs),
            ]
            try:
                self.run(args)
                _TRAINED[self.name] = paths
            except Exception as exc:
                _TRAINED[self.name] = exc
        found = _TRAINED[self.name]
        if isinstance(found, Exception):
            raise found
        return found


_TRAINED: dict[str, Paths | Exception] = {}  # by bundle name


def assert_tensorrt_fell_back(log: str) -> None:
    """Without a GPU, MONAI's trt_compile said it did nothing, so the run (which exited 0 and wrote its
    outputs: the callers check) went on with the eager network."""
    if not torch.cuda.is_available():
        assert TRT_NO_OP in log, log[-2000:]


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]


# -- the four bundles --------------------------------------------------------------------------------------

CTV_TINY = ("--channels", "[4,8,8,16,16]", "--roi_size", "[32,32,16]", "--pixdim", "[8.0,8.0,16.0]")
CTV_TINY += ("--n_prompts", "1", "--prompt_length", "2")


def _ctv_train(p: Paths, models: Path, out: Path, epochs: str) -> list[str]:
    return [
        *("--train_source", str(p["data"]), "--val_source", str(p["data"]), "--cache_dir", str(p["cache"])),
        *("--ckpt_dir", str(models), "--output_dir", str(out), "--epochs", epochs, "--val_interval", "1"),
        *CTV_TINY,
    ]


def _ctv_infer(p: Paths, out: Path) -> list[str]:
    return [
        *("--data_source", str(p["data"]), "--cache_dir", str(p["cache"])),
        *("--ckpt_path", str(p["models"] / "model.pt"), "--output_dir", str(out)),
        *CTV_TINY,
    ]


CTV = Bundle(
    name="ctv_llmseg",
    data=lambda request: request.getfixturevalue("breast_cohort"),
    train=_ctv_train,
    infer=_ctv_infer,
    epochs="2",
    ddp_epochs="1",
    master_port=29517,
    outputs="*_ctv.nii.gz",
)

ASSISTANT_TINY = ("--filters", "[4,8,16]", "--roi_size", "[32,32,32]", "--pixdim", "[6.0,6.0,6.0]")


def _assistant_train(p: Paths, models: Path, out: Path, epochs: str) -> list[str]:
    return [
        *("--train_source", str(p["data"]), "--val_source", str(p["data"])),
        *("--ckpt_dir", str(models), "--output_dir", str(out)),
        *("--pretrain_epochs", "1", "--epochs", epochs, "--val_interval", "1"),
        *ASSISTANT_TINY,
    ]


def _assistant_infer(p: Paths, out: Path) -> list[str]:
    model = str(p["models"] / "model.pt")
    return ["--data_source", str(p["data"]), "--ckpt_path", model, "--output_dir", str(out), *ASSISTANT_TINY]


ASSISTANT = Bundle(
    name="tace_assistant",
    data=lambda request: request.getfixturevalue("prepared_liver"),
    train=_assistant_train,
    infer=_assistant_infer,
    epochs="1",
    ddp_epochs="1",
    master_port=29519,
    outputs="**/*_liver_tumor.nii.gz",
)

DYNAMICS_TINY = ("--channels", "[8,16,16]", "--roi_size", "[16,16,16]", "--pixdim", "[6.0,6.0,6.0]")


def _dynamics_train(p: Paths, models: Path, out: Path, epochs: str) -> list[str]:
    return [
        *("--train_source", str(p["data"]), "--val_source", str(p["data"])),
        *("--ckpt_dir", str(models), "--output_dir", str(out), "--epochs", epochs, "--val_interval", "1"),
        *DYNAMICS_TINY,
    ]


def _dynamics_infer(p: Paths, out: Path) -> list[str]:
    return [
        *("--data_source", str(p["data"]), "--ckpt_path", str(p["models"] / "model.pt"), "--output_dir", str(out)),
        *("--samples", "2", "--num_inference_steps", "4"),
        *DYNAMICS_TINY,
    ]


DYNAMICS = Bundle(
    name="tace_dynamics",
    data=lambda request: request.getfixturevalue("prepared_liver"),
    train=_dynamics_train,
    infer=_dynamics_infer,
    epochs="2",
    ddp_epochs="2",
    master_port=29523,
    outputs="*/simulated_post_0.nii.gz",
)

SURVIVAL_TINY = ("--channels", "[8,16,16]", "--roi_size", "[16,16,16]", "--pixdim", "[6.0,6.0,6.0]")
SURVIVAL_TINY += ("--eval_patches", "2", "--num_heads", "2")
# Four cases (two prepared cases, each twice with its own survival): the Cox loss needs several per step.
SURVIVAL_CASES = [(20.0, 1), (60.0, 0), (40.0, 1), (100.0, 1)]  # (OS weeks, death)
_SURVIVAL_COHORT: dict[str, Path] = {}


def survival_cohort(request: pytest.FixtureRequest) -> Path:
    """The prepared liver cases with `SURVIVAL_CASES` (datalist.json, and cohort.csv with the survival
    halved, to test the CSV path); once per session."""
    if "cohort" not in _SURVIVAL_COHORT:
        prepared = request.getfixturevalue("prepared_liver")
        out = request.getfixturevalue("tmp_path_factory").mktemp("survival_cohort")
        cases = json.loads((prepared / "datalist.json").read_text())["data"]
        entries = []
        for i, (weeks, event) in enumerate(SURVIVAL_CASES):
            entry = dict(cases[i % len(cases)], case_id=f"S{i}", os_weeks=weeks, event=float(event))
            for key in ("pre_image", "post_image", "pre_label", "post_label"):
                entry[key] = str(prepared / entry[key])  # absolute: load_prepared keeps it
            entries.append(entry)
        (out / "datalist.json").write_text(json.dumps({"data": entries}))
        with open(out / "cohort.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["TCIA_ID", "OS", "Death_1_StillAliveorLostToFU_0"])
            w.writerows([f"S{i}", weeks / 2, event] for i, (weeks, event) in enumerate(SURVIVAL_CASES))
        _SURVIVAL_COHORT["cohort"] = out
    return _SURVIVAL_COHORT["cohort"]


def _survival_train(p: Paths, models: Path, out: Path, epochs: str) -> list[str]:
    return [
        *("--train_source", str(p["data"]), "--val_source", str(p["data"])),
        *("--ckpt_dir", str(models), "--output_dir", str(out)),
        *("--epochs", epochs, "--batch_size", "4", "--patches_per_case", "2"),
        *SURVIVAL_TINY,
    ]


def _survival_infer(p: Paths, out: Path) -> list[str]:
    return [
        *("--data_source", str(p["data"]), "--ckpt_path", str(p["models"] / "model.pt"), "--output_dir", str(out)),
        *SURVIVAL_TINY,
    ]


SURVIVAL = Bundle(
    name="tace_survival",
    data=survival_cohort,
    train=_survival_train,
    infer=_survival_infer,
    epochs="2",
    ddp_epochs="2",
    master_port=29527,
    outputs="risk.json",
)

BUNDLES = (CTV, ASSISTANT, DYNAMICS, SURVIVAL)

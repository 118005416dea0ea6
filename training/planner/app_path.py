"""The planning evaluation through the app's own path (``oncoplan evaluate tace --path app``).

For each held-out case the pre-treatment DICOM study (``COHORT/<case>/dicom/pre``) is planned by the
command users run, ``python -m oncoplan plan`` in a fresh process: the app's input check and series
choice, its preprocessing of the DICOM volume, the assistant's segmentation, its policy (no practice
prior), its default heuristic, and the case's clinical data as the app reads it: a ``clinical.json``
written for the case from its ``cohort.csv`` row (the row's columns that name a field of the app's
schema, :mod:`oncoplan.tace.patient`; identifiers and the physician's protocol left out), given with
``--clinical``, or nothing at all (CT only). The evaluation reads the app's ``plan.json`` and scores its
recommendation under the ground truth exactly as it scores the evaluation path's. The app is given the
study's files (linked into ``OUT/app/<case>/study``) without any ``clinical.json`` a generator put in
it, so that with ``--clinical none`` the app finds no clinical data (it would read one in or beside its
input folder), and with ``cohort`` the clinical data it reads is the given file's; plan.json's
``clinical.source`` is checked to be the one asked for.

A subprocess and not an import: ``training`` never imports the apps (PRODUCT.md, Layout), and a fresh
process per case is what a user runs. Each case's app outputs (plan.json, SR, SEG, PDF), the
clinical.json it was given and the app's log stay under ``OUT/app/<case>/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oncoplan.errors import InputError
from oncoplan.planner.deid import IDENTIFIER_COLUMNS
from oncoplan.tace.actions import ACTION_BASE, TCIA_DRUGS, TCIA_EMBOLICS
from oncoplan.tace.patient import ClinicalData, field_named

# Variables through which the app would read options the evaluation gives explicitly (or, for the
# clinical data, must not give in CT-only mode): removed from the app's environment.
CLEARED_ENV = ("ONCOPLAN_CLINICAL", "ONCOPLAN_TACE_SETTINGS", "ONCOPLAN_SERIES")
APP_TIMEOUT_S = 3600
GIVEN_SOURCE = "the --clinical file"  # plan.json's clinical.source for data given with --clinical


def clinical_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The cohort row's columns that name a field of the app's clinical schema, JSON-ready (no identifier,
    no empty value); validated as the app validates them (a bad value is one line naming the field)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in IDENTIFIER_COLUMNS or field_named(str(key)) is None:
            continue
        if hasattr(value, "item"):  # numpy scalars from pandas
            value = value.item()
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
            continue
        out[str(key)] = value
    ClinicalData.from_mapping(out, "cohort.csv row")
    return out


def stage_study(study: Path, staged: Path) -> Path:
    """`study`'s files linked (symlinks) into `staged`, same layout, without any clinical.json."""
    if staged.exists():
        shutil.rmtree(staged)
    for path in sorted(study.rglob("*")):
        if path.is_file() and path.name != "clinical.json":
            link = staged / path.relative_to(study)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return staged


def action_set_name(action_set: Sequence[str]) -> str:
    """The app's ``action_set`` setting for an action set: ``tcia`` or ``full``."""
    if tuple(action_set) == tuple(TCIA_DRUGS + TCIA_EMBOLICS):
        return "tcia"
    if tuple(action_set) == tuple(ACTION_BASE):
        return "full"
    raise InputError(f"the app plans over the tcia or the full action set, not {list(action_set)}")


class AppPath:
    """Runs ``python -m oncoplan plan`` per case and returns what its plan.json says.

    `settings`: the evaluation's search settings as the app's ``--settings`` JSON fields (``base`` and
    any changed search field); the case's action set is added per case. `models`: the ``-m`` folder
    (None: the shipped bundles, as a user runs). `policy_args`: the app's policy options, as given to
    the evaluation. `clinical`: ``cohort`` (a clinical.json from the case's row) or ``none``."""

    def __init__(
        self,
        out: str | Path,
        settings: Mapping[str, Any],
        models: str | Path | None = None,
        policy_args: Sequence[str] = (),
        clinical: str = "cohort",
        python: str = sys.executable,
    ) -> None:
        self.out = Path(out) / "app"
        self.settings, self.models, self.policy_args = dict(settings), models, list(policy_args)
        self.clinical, self.python = clinical, python

    def command(self, study: Path, out: Path, clinical_file: Path | None, action_set: Sequence[str]) -> list[str]:
        settings = {**self.settings, "action_set": action_set_name(action_set)}
        cmd = [self.python, "-m", "oncoplan", "plan", "-i", str(study), "-o", str(out)]
        cmd += ["--settings", json.dumps(settings, sort_keys=True)]
        if self.models is not None:
            cmd += ["-m", str(self.models)]
        if clinical_file is not None:
            cmd += ["--clinical", str(clinical_file)]
        return cmd + self.policy_args

    def plan(self, cohort: Path, case_id: str, row: Mapping[str, Any], action_set: Sequence[str]) -> dict[str, Any]:
        """The app's plan.json for one case (with ``app``: where its files are and what it read)."""
        study = cohort / case_id / "dicom" / "pre"
        if not study.is_dir():
            raise InputError(f"{study}: no pre-treatment DICOM study for the app path")
        folder = self.out / case_id
        folder.mkdir(parents=True, exist_ok=True)
        result = folder / "plan"
        if result.exists():  # an earlier run's outputs: the app writes a whole new set
            shutil.rmtree(result)
        staged = stage_study(study, folder / "study")
        clinical_file = None
        if self.clinical == "cohort":
            clinical_file = folder / "clinical.json"
            clinical_file.write_text(json.dumps(clinical_fields(row), indent=1))
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        cmd = self.command(staged, result, clinical_file, action_set)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=APP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise InputError(f"{study}: oncoplan plan ran past {APP_TIMEOUT_S} s") from None
        wall_s = time.perf_counter() - t0
        (folder / "app.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"{study}: oncoplan plan exited {done.returncode} ({last}); log in {folder / 'app.log'}")
        plan = json.loads((result / "plan.json").read_text())
        source = plan.get("clinical", {}).get("source")
        expected = GIVEN_SOURCE if clinical_file is not None else "none"
        if source != expected:  # the measurement would not be the one asked for
            raise InputError(f"{study}: the app read clinical data from {source!r}, expected {expected!r}")
        plan["app"] = {
            "folder": str(folder),
            "command": ["python", *cmd[1:]],
            "clinical_source": source,
            "clinical_given": plan.get("clinical", {}).get("given", {}),
            "imputed": plan.get("clinical", {}).get("imputed", []),
            "segmentation": plan.get("segmentation", {}),
            "phase": plan.get("phase"),
            "settings_name": plan.get("settings_name"),
            "wall_s": round(wall_s, 1),
        }
        return plan

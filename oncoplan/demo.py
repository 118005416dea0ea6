"""The main job on an embedded default: one synthetic study of each workflow.

The demo generates a breast RT study and a liver TACE study (DICOM CT + ground truth), shaped as a
PACS sends them (training/synth/pacs.py), runs
the CTV contouring app on the breast study (note from its clinical.json) and the TACE planning
app on the liver study's pre-treatment CT and its clinical.json (search settings `cpu` unless told otherwise), and
lists the files written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import InputError


def _contour(study: Path, out: Path) -> None:
    from .apps.ctv_contouring.app import CTVContouringApp
    from .apps.runner import run_app

    print(f"contouring the CTV of {study} (note from {study.parent / 'clinical.json'}) ...", flush=True)
    for path in run_app(CTVContouringApp, study, out, None):
        print(f"  wrote {path}")


def _plan(study: Path, out: Path, settings: str | None) -> None:
    from .apps.runner import run_app
    from .apps.tace_planner.app import TacePlannerApp

    print(f"planning TACE for {study} (world-model search, settings {settings or 'cpu'}) ...", flush=True)
    for path in run_app(TacePlannerApp, study, out, None, settings=settings):
        print(f"  wrote {path}")


def run_demo(out: Path, size: str = "full", settings: str | None = None) -> int:
    from .training.synth.cohort import generate_cohort
    from .training.synth.pacs import pacs_shape_cohort

    out = Path(out)
    for kind in ("breast", "liver"):
        target = out / kind
        # Re-running the demo replaces its own previous output, never anything else.
        if target.exists():
            meta = target / "cohort.json"
            if not (meta.is_file() and json.loads(meta.read_text()).get("kind") == kind):
                raise InputError(f"{target}: exists and is not an earlier demo output; choose another --out")
            shutil.rmtree(target)
        # Shaped as a PACS sends it (topogram, second reconstruction, reformat, dose objects): the apps'
        # log names the series they chose and each one they passed over.
        generate_cohort(
            kind, target, 1, 0, "internal", size, finish=lambda cohort, kind=kind: pacs_shape_cohort(cohort, kind)
        )
        case = next(p for p in sorted(target.iterdir()) if p.is_dir())
        print(f"{kind}: synthetic study in {case} (DICOM CT under dicom/, ground truth under labels/)")
        if kind == "breast":
            _contour(case / "dicom", target / "ctv_output")
        else:
            _plan(case / "dicom" / "pre", target / "tace_output", settings)
    print("RESEARCH USE ONLY - synthetic data, not a medical device.")
    return 0

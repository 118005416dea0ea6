"""What a person sees while an app runs from the `oncoplan` command.

By default: our own lines, one per stage, each with the seconds since the run began (the chosen series
and why, the backend, the note or clinical data as read, the result), then the closing summary the CLI
prints. Holoscan's C++ logger, the SDK's, MONAI's and the other libraries' lines and Python's warnings
are kept for `-v`, which shows everything as the SDK logs it (`python -m oncoplan.apps.<app>`, what a
MAP container and the listener's app routes run, always logs everything). In both, no line carries a
UID or a date (highdicom names the datasets it copies from by UID).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from oncoplan.redact import CurrentStderr, scrub_every_record

VERBOSE_ENV = "ONCOPLAN_VERBOSE"  # "1": -v for every run of this process (e.g. a MAP's environment)
QUIET_ENV = {
    "HOLOSCAN_LOG_LEVEL": "ERROR",  # Holoscan's C++ logger: scheduler, extension and CUDA-driver lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar
}
_QUIETED = "ONCOPLAN_QUIETED"  # which of QUIET_ENV this process set (so -v in a child can take them back)
_state: dict = {"verbose": True, "wall": time.time()}


class _Elapsed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.created - _state['wall']:6.1f} s  {record.getMessage()}"
        return line if record.levelno < logging.WARNING else f"{line}  [{record.levelname.lower()}]"


def configure(verbose: bool) -> None:
    """Set before the app's modules (Holoscan, MONAI, transformers) are imported: their loggers read
    these variables when they start."""
    verbose = verbose or os.environ.get(VERBOSE_ENV) == "1"
    _state.update(verbose=verbose, wall=time.time())
    scrub_every_record()
    ours = logging.getLogger("oncoplan")
    if verbose:
        # what a quiet parent (e.g. `oncoplan listen` starting `oncoplan -v contour`) set, not the user
        for name in os.environ.pop(_QUIETED, "").split():
            os.environ.pop(name, None)
        ours.handlers.clear()
        ours.propagate = True
        ours.setLevel(logging.DEBUG)  # our reasons too (each series passed over, each file written)
        return
    quieted = [name for name, value in QUIET_ENV.items() if os.environ.setdefault(name, value) == value]
    os.environ[_QUIETED] = " ".join(quieted)
    handler = CurrentStderr()
    handler.setFormatter(_Elapsed())
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logging.captureWarnings(True)  # library warnings go to the root logger, which -v alone shows


def verbose() -> bool:
    return bool(_state["verbose"])


def graph_log_level() -> list[str]:
    """The SDK's log-level option for the graph: everything with -v, errors alone otherwise (its
    dictConfig sets the root logger's level from it)."""
    return [] if verbose() else ["-l", "ERROR"]


# --- closing summaries: read back from what was written, so they say what the files hold ---------------
def _by_name(written: list[Path]) -> dict[str, Path]:
    return {p.name: p for p in written}


def ctv_summary(written: list[Path]) -> list[str]:
    """The CTV's volume and side(s), and what the contour was conditioned on."""
    import numpy as np
    import pydicom

    files = _by_name(written)
    lines = []
    if "ctv_seg.dcm" in files:
        ds = pydicom.dcmread(files["ctv_seg.dcm"])
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        step = float(getattr(measures, "SpacingBetweenSlices", None) or measures.SliceThickness)
        voxel_mm3 = float(measures.PixelSpacing[0]) * float(measures.PixelSpacing[1]) * step
        cm3 = float(np.count_nonzero(ds.pixel_array)) * voxel_mm3 / 1000.0
        lines.append(f"CTV: {cm3:.1f} cm3")
    if "ctv_note.json" in files:
        note = json.loads(files["ctv_note.json"].read_text())
        sides = " and ".join(s["side"] for s in note.get("sides", []))
        head = lines.pop() if lines else "CTV"
        lines.append(f"{head}, {sides or 'side not given'} (conditioned on: {note.get('interpretation', '?')})")
        if note.get("reader_requested"):  # an LLM note reader: who read it, and why the rules did if they did
            fallback = note.get("reader_fallback")
            read = f"the rules (fallback: {fallback})" if fallback else note["reader_requested"]
            lines.append(f"note read by {read}")
    return lines


def plan_summary(written: list[Path]) -> list[str]:
    """The chosen protocol, its predicted risk, and any contraindication or caution."""
    files = _by_name(written)
    if "plan.json" not in files:
        return []
    plan = json.loads(files["plan.json"].read_text())
    best, ranked = plan.get("best") or {}, plan.get("ranked") or []
    lines = [
        f"plan: {best.get('protocol', '?')} (mean predicted risk {best.get('mean_risk', float('nan')):.3f}, "
        f"best of {len(ranked)} protocols; picked by {plan.get('pick', '?')})"
    ]
    for kind in ("contraindications", "cautions"):
        found = plan.get(kind) or []
        names = [str(c.get("text", c)) if isinstance(c, dict) else str(c) for c in found]
        lines.append(f"{kind}: {', '.join(names) if names else 'none flagged'}")
    imputed = [
        name for name, v in ((plan.get("clinical") or {}).get("model_covariates") or {}).items() if v.get("imputed")
    ]
    if imputed:
        lines.append(f"clinical data imputed with the training median: {', '.join(imputed)}")
    return lines

"""Series selection rules (the SDK selector's JSON) and where each app finds its bundle."""

from __future__ import annotations

import json
from pathlib import Path

from oncoplan.errors import InputError

# An original axial CT; derived series (MPR, MIP, localizers) are not volumes to contour on.
CT_RULES = json.dumps(
    {
        "selections": [
            {
                "name": "CT",
                "conditions": {"Modality": "(?i)^CT$", "ImageType": ["ORIGINAL", "AXIAL"]},
            }
        ]
    }
)
# The pre-treatment contrast CT of a liver study, portal-venous preferred, else arterial. The phase
# is not a DICOM attribute: ContrastPhaseSelectorOperator (phase_selector.py) derives it with the
# HCC-TACE-Seg rules of oncoplan.training.tace.tcia_index; selections are tried in this order.
TACE_RULES = json.dumps(
    {
        "selections": [
            {
                "name": phase,
                "conditions": {
                    "Modality": "(?i)^CT$",
                    "ImageType": ["ORIGINAL", "AXIAL"],
                    "ContrastPhase": f"^{phase}$",
                },
            }
            for phase in ("PVP", "AP")
        ]
    }
)
TACE_BUNDLES = ("tace_assistant", "tace_dynamics", "tace_survival")
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundle_path(model_path: str | Path | None, name: str) -> Path:
    """The bundle under -m MODELS: MODELS itself, MODELS/<name>, or the shipped default."""
    for candidate in ([Path(model_path), Path(model_path) / name] if model_path else []) + [BUNDLES / name]:
        if (candidate / "configs" / "inference.json").is_file():
            return candidate
    raise InputError(f"{model_path}: no MONAI bundle {name!r} (configs/inference.json) found")

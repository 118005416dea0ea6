"""Whether a CT can hold the organ an app works on, read from its BodyPartExamined.

Each app's models were trained on one region (the breast CTV on chest CTs, the TACE assistant on
liver CTs). Given a CT of another region they still find "their" organ, and the output looks as
sure as any (the TACE assistant found a 300-1,900 cm3 "liver" with a "tumor" in breast RT planning
CTs). A CT whose BodyPartExamined names a region that cannot hold the organ is therefore no
candidate; one that names none (real studies often do not) or any other region stays one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataset import Dataset

from oncoplan.errors import InputError

# BodyPartExamined values (DICOM PS3.16 Annex L terms, upper case without spaces, '_' or '-') of
# regions that cannot hold the organ, and what an app needs instead.
# fmt: off
_LIMBS = {"EXTREMITY", "ARM", "LEG", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW", "HIP"}
_HEAD = {"HEAD", "BRAIN", "SKULL", "NECK", "HEADNECK", "CSPINE"}
WITHOUT = {
    "liver": frozenset(_HEAD | _LIMBS | {
        "TSPINE", "LSPINE", "SSPINE", "CHEST", "THORAX", "LUNG", "HEART", "BREAST", "PELVIS", "SHOULDER",
    }),
    "breast": frozenset(_HEAD | _LIMBS | {
        "LSPINE", "SSPINE", "ABDOMEN", "ABDOMENPELVIS", "PELVIS", "LIVER", "KIDNEY", "PROSTATE", "BLADDER",
    }),
}
NEEDED = {
    "liver": "TACE planning needs an abdominal CT that holds the whole liver",
    "breast": "CTV contouring needs a chest CT that holds the breast",
}
# fmt: on


def region_of(ds: Dataset, organ: str) -> str | None:
    """The dataset's BodyPartExamined if it names a region that cannot hold `organ`, else None."""
    part = re.sub(r"[\s_\-]", "", str(ds.get("BodyPartExamined", "") or "")).upper()
    return part if part in WITHOUT[organ] else None


def no_ct_of(organ: str, regions: Iterable[str]) -> InputError:
    return InputError(
        f"input: no CT of the {organ}: BodyPartExamined is {', '.join(sorted(set(regions)))}; {NEEDED[organ]}"
    )

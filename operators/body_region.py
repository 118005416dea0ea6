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

from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

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


def first_instance(series: DICOMSeries):
    return series.get_sop_instances()[0].get_native_sop_instance()


def region_without(series: DICOMSeries, organ: str) -> str | None:
    """The series' BodyPartExamined if it names a region that cannot hold `organ`, else None."""
    part = re.sub(r"[\s_\-]", "", str(first_instance(series).get("BodyPartExamined", "") or "")).upper()
    return part if part in WITHOUT[organ] else None


def no_ct_of(organ: str, regions: Iterable[str]) -> InputError:
    return InputError(
        f"input: no CT of the {organ}: BodyPartExamined is {', '.join(sorted(set(regions)))}; {NEEDED[organ]}"
    )


def series_with(series: Iterable[DICOMSeries], organ: str) -> list[DICOMSeries]:
    """The series that may hold `organ`; one line naming the regions when some were given and none may."""
    given = [(s, region_without(s, organ)) for s in series]
    keep = [s for s, region in given if region is None]
    if given and not keep:
        raise no_ct_of(organ, (str(region) for _, region in given))
    return keep


class OrganSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """The SDK's series selector, passing over series of a region that cannot hold `organ`."""

    def __init__(self, *args, organ: str, **kwargs) -> None:
        self.organ = organ
        super().__init__(*args, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        # Every match first, so a series passed over leaves the next one that matched.
        matched = super().filter(selection_rules, dicom_study_list, True, sort_by_sop_instance_count)
        out, passed_over = [], []
        for study in matched:
            chosen = []
            for selected in study.selected_series:
                region = region_without(selected.series, self.organ)
                if region is None:
                    chosen.append(selected)
                else:
                    passed_over.append(region)
            if chosen:
                one = StudySelectedSeries(study.study)
                for selected in chosen if all_matched else chosen[:1]:
                    one.add_selected_series(selected)
                out.append(one)
        if not out and passed_over:
            raise no_ct_of(self.organ, passed_over)
        return out

"""The SDK's series selector, told each CT series' contrast phase by the HCC-TACE-Seg rules.

A liver study holds several CT series (non-contrast, arterial, portal-venous) whose
SeriesDescriptions are messy ("Recon 3: LIVER 3 PHASE (AP)" is portal-venous, "C-A-P" says
nothing). The phase of each series comes from :func:`oncoplan.training.tace.tcia_index.resolve_phases`
(description, then bolus timing, then order), the rules the TCIA indexer derived from the real
collection; the SDK's JSON rules then match on it as the attribute ``ContrastPhase``, in their
order of preference (PVP, else AP; see ``TACE_RULES``).

When the input holds several studies of one patient, the earliest (StudyDate, StudyTime) is the
pre-treatment study, as in the indexer. One series is emitted: the first selection that matched.

A CT whose BodyPartExamined names a region without the liver (a chest or breast RT planning CT, a
head, a pelvis) is no candidate (`body_region.py`).
"""

from __future__ import annotations

import logging

from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from oncoplan.errors import InputError
from oncoplan.training.tace.tcia_index import CTSeries, dicom_seconds, resolve_phases

from .body_region import first_instance, series_with

log = logging.getLogger(__name__)
PHASE_ATTRIBUTE = "ContrastPhase"


def _ct_series(series: DICOMSeries) -> CTSeries:
    """The indexer's view of one SDK series (headers only)."""
    datasets = [s.get_native_sop_instance() for s in series.get_sop_instances()]
    first = datasets[0]
    times = [t for t in (dicom_seconds(ds.get("AcquisitionTime")) for ds in datasets) if t is not None]
    image_type = first.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    try:
        number = int(first.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    return CTSeries(
        uid=str(series.SeriesInstanceUID),
        number=number,
        description=str(first.get("SeriesDescription", "") or "").strip(),
        acquisition_s=min(times) if times else None,
        bolus_start_s=dicom_seconds(first.get("ContrastBolusStartTime")),
        contrast_agent=str(first.get("ContrastBolusAgent", "") or "").strip(),
        localizer=any("LOCALIZER" in str(v).upper() for v in image_type),
    )


def _study_key(study) -> tuple[str, float]:
    ds = first_instance(study.get_all_series()[0])
    return str(ds.get("StudyDate", "") or "99999999"), dicom_seconds(ds.get("StudyTime")) or 0.0


class ContrastPhaseSelectorOperator(DICOMSeriesSelectorOperator):
    """DICOMSeriesSelectorOperator whose rules may name ``ContrastPhase`` (NC, AP, PVP); see the module doc."""

    def __init__(self, *args, **kwargs) -> None:
        self._phases: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def _get_instance_properties(self, obj: object) -> dict:
        props = DICOMSeriesSelectorOperator._get_instance_properties(obj)
        if isinstance(obj, DICOMSeries):
            props[PHASE_ATTRIBUTE] = self._phases.get(str(obj.SeriesInstanceUID))
        return props

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        studies = [s for s in dicom_study_list or [] if any(_is_ct(x) for x in s.get_all_series())]
        if not studies:
            raise InputError("input: no CT series in the study")
        patients = {str(first_instance(s.get_all_series()[0]).get("PatientID", "")) for s in studies}
        if len(patients) > 1:
            raise InputError(f"input: studies of {len(patients)} patients; give one patient's studies per run")
        pre = min(studies, key=_study_key)
        if len(studies) > 1:
            log.info("%d CT studies: the earliest (%s) is the pre-treatment study", len(studies), _study_key(pre)[0])
        ct = {
            str(s.SeriesInstanceUID): _ct_series(s) for s in series_with(filter(_is_ct, pre.get_all_series()), "liver")
        }
        chosen = resolve_phases(ct.values())
        self._phases = {s.uid: phase for phase, s in chosen.items()}
        for s in ct.values():
            log.info("series %s: %s (%s)", s.label(), s.phase or "no phase", s.rule or s.note or "-")
        selected = super().filter(selection_rules, [pre], False, False)
        if not selected or not selected[0].selected_series:
            found = ", ".join(f"{s.label()} -> {s.phase or s.note or 'no phase'}" for s in ct.values())
            raise InputError(f"input: no pre-treatment contrast CT (portal-venous or arterial) series; found {found}")
        best = selected[0].selected_series[0]
        log.info("pre-treatment series: %s phase %s", best.series.SeriesDescription, best.selection_name)
        one = StudySelectedSeries(pre)
        one.add_selected_series(best)
        return [one]


def _is_ct(series: DICOMSeries) -> bool:
    return str(series.Modality or first_instance(series).get("Modality", "")).upper() == "CT"

"""The contrast phase of each candidate series of a liver study, by the HCC-TACE-Seg rules.

A liver study holds several CT series (non-contrast, arterial, portal-venous) whose
SeriesDescriptions are messy ("Recon 3: LIVER 3 PHASE (AP)" is portal-venous, "C-A-P" says
nothing). The phase of each series comes from :func:`oncoplan.tace.phases.resolve_phases`
(description, then bolus timing, then order), the rules the TCIA indexer derived from the real
collection. TACE planning takes the portal-venous series, else the arterial one, and reads the arterial
series beside a portal-venous one (same frame of reference) for what the two phases show together.

A PACS often sends more than one reconstruction of an acquisition (1 mm and 5 mm, soft tissue and
lung): they would look like extra phases to the order rule, so each acquisition (series sharing a
frame of reference and acquisition time) is first reduced to its best reconstruction by the series
rules (series_rules.py), which also passed over localizers, reformats and the rest beforehand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from oncoplan.errors import InputError
from oncoplan.operators.series_rules import Choice, SeriesInfo, best_of
from oncoplan.tace.phases import CTSeries, dicom_seconds, resolve_phases

log = logging.getLogger(__name__)
PREFERRED = ("PVP", "AP")  # the phases TACE planning works on, in order of preference


def _ct_series(info: SeriesInfo) -> CTSeries:
    """The indexer's view of one series (headers only)."""
    first = info.datasets[0]
    times = [t for t in (dicom_seconds(ds.get("AcquisitionTime")) for ds in info.datasets) if t is not None]
    return CTSeries(
        uid=info.uid,
        number=info.number,
        description=info.description,
        acquisition_s=min(times) if times else None,
        bolus_start_s=dicom_seconds(first.get("ContrastBolusStartTime")),
        contrast_agent=str(first.get("ContrastBolusAgent", "") or "").strip(),
        localizer="LOCALIZER" in info.image_type,
    )


def choose_phase(candidates: Sequence[SeriesInfo], passed: list[tuple[SeriesInfo, str]]) -> Choice:
    """The portal-venous (else arterial) series among one study's candidates, best reconstruction first."""
    acquisitions: dict[str, list[SeriesInfo]] = {}
    for s in candidates:
        acquisitions.setdefault(s.acquisition or s.uid, []).append(s)
    chosen_recon: dict[str, tuple[SeriesInfo, str]] = {}
    for group in acquisitions.values():
        best, why = best_of(group, "reconstructions of one acquisition")
        chosen_recon[best.uid] = (best, why)
        passed += [
            (s, f"another reconstruction of the acquisition of {best.label()} ({why})") for s in group if s is not best
        ]
    ct = {uid: _ct_series(info) for uid, (info, _) in chosen_recon.items()}
    phases = resolve_phases(ct.values())
    for s in ct.values():
        log.debug("series %s: %s (%s)", s.label(), s.phase or "no phase", s.rule or s.note or "-")
    phase = next((p for p in PREFERRED if p in phases), None)
    if phase is None:
        found = ", ".join(f"{s.label()} -> {s.phase or s.note or 'no phase'}" for s in ct.values())
        raise InputError(f"input: no pre-treatment contrast CT (portal-venous or arterial) series; found {found}")
    info, why = chosen_recon[phases[phase].uid]
    recon = "" if why == "the only candidate" else f"; best reconstruction: {why}"
    arterial = None
    if phase == "PVP" and "AP" in phases:
        candidate = chosen_recon[phases["AP"].uid][0]
        frame = lambda s: str(s.datasets[0].get("FrameOfReferenceUID", "") or "")  # noqa: E731
        if frame(candidate) and frame(candidate) == frame(info):  # one frame: the grids map by position
            arterial = candidate
            recon += f"; arterial phase beside it: {candidate.label()}"
    return Choice(info, f"{phase} phase ({phases[phase].rule}){recon}", passed, phase, arterial)

"""Which series of a study each app works on (one rule set for the input check and the selectors), and where
each app finds its bundle."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from oncoplan.errors import InputError
from oncoplan.operators.body_region import no_ct_of, region_of
from oncoplan.operators.ct_volume import check_geometry

log = logging.getLogger(__name__)

# Series selection for real studies: one rule set per app, used by the input check (before the graph
# starts) and by the apps' series selectors (inside it), so both always agree on the series.
#
# 1. `--series` / $ONCOPLAN_SERIES (a SeriesInstanceUID or a SeriesNumber) names the series outright.
# 2. Passed over: objects of other modalities (SR dose reports, RTSTRUCT, RTPLAN, RTDOSE, KO, PR, OT, SEG),
#    multi-frame CT (Enhanced CT: no other CT left is refused with how to convert it), non-image CT objects
#    (secondary captures such as dose screens), localizers (topograms, scouts),
#    derived or secondary series (MPR, MIP, reformats, screen captures), non-axial series, series of a
#    region that cannot hold the organ (body_region.py), and incomplete series (a gap, one slice, no geometry).
# 3. Among what remains, in this order: a SeriesDescription matching $ONCOPLAN_SERIES_DESCRIPTION (a
#    regular expression a site sets for its naming), a soft-tissue kernel (not lung, bone or sharp), the
#    thinnest slices, the longest coverage. Two candidates equal on all of these are refused: one line
#    listing them and how to pick one.
# Several studies of the patient in one folder (a planning CT and an older diagnostic CT, say): CTV
# contouring works in the most recent study (StudyDate, StudyTime) that has a candidate series, and
# passes over the earlier studies' series; studies that no date and time order (one lacks them, or two
# share them) are refused: one line listing each study's candidates and how to pick one with --series.
# TACE planning first takes the earliest study of the patient (pre-treatment), keeps the best
# reconstruction of each acquisition (series sharing frame of reference and acquisition time) by
# rule 3, then the contrast phase (phase_selector.py): portal-venous, else arterial.
SERIES_ENV = "ONCOPLAN_SERIES"
DESCRIPTION_ENV = "ONCOPLAN_SERIES_DESCRIPTION"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Multi-frame CT: one file holds the whole series. The SDK's series-to-volume operator reads single-frame CT
# Image Storage only, so these are passed over, and a study with no other CT is refused with how to convert it.
MULTI_FRAME_CT = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
}
MULTI_FRAME = "multi-frame"  # how passed_over's reason for them begins
# Sharp kernels (lung, bone, detail): GE LUNG/BONE/BONEPLUS/DETAIL/EDGE, Siemens B60-B99, Br6x+, Bl, I60+,
# Canon FC5x/FC8x, Philips L/D/YC/YD. A soft-tissue reconstruction of the same acquisition is preferred.
SHARP_KERNEL = re.compile(
    r"(?i)lung|bone|sharp|detail|edge|^b[6-9]\d|^br[6-9]|^bl\d|^i[6-9]\d|^fc[58]\d|^y[cd]$|^[ld]$"
)
DERIVED_WORDS = {"DERIVED", "SECONDARY", "MPR", "MIP", "MINIP", "REFORMATTED", "PROJECTION IMAGE", "SCREEN SAVE"}
AXIAL_COSINE = 0.8  # slice normal within ~37 degrees of the body axis: axial, gantry tilt included


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules read from one series' headers (no pixel data)."""

    uid: str
    study_uid: str
    patient_id: str
    study_key: tuple[str, str]  # (StudyDate, StudyTime): the earliest study is the pre-treatment one
    number: int | None
    description: str
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    kernel: str
    slices: int
    spacing: float | None  # mm between slices along the normal; None without geometry
    extent: float  # mm covered along the normal
    normal: tuple[float, float, float] | None
    acquisition: str  # frame of reference + first AcquisitionTime: one acquisition's reconstructions share it
    geometry_error: str | None
    datasets: tuple[Dataset, ...] = field(repr=False, compare=False)

    @classmethod
    def of(cls, datasets: Sequence[Dataset]) -> SeriesInfo:
        first = datasets[0]
        image_type = first.get("ImageType") or ()
        image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
        try:
            number = int(first.get("SeriesNumber"))
        except (TypeError, ValueError):
            number = None
        description = str(first.get("SeriesDescription", "") or "").strip()
        label = f"series {number if number is not None else '?'} {description!r}"
        error = None
        try:
            check_geometry(list(datasets), label)
        except (InputError, ValueError, TypeError, AttributeError) as exc:  # malformed values count as missing
            error = str(exc) if isinstance(exc, InputError) else f"{label}: malformed geometry ({exc})"
        normal, spacing, extent = None, None, 0.0
        try:
            iop = np.asarray(first.ImageOrientationPatient, dtype=float)
            n = np.cross(iop[:3], iop[3:])
            normal = tuple(float(v) for v in n)
            z = np.sort([np.asarray(ds.ImagePositionPatient, dtype=float) @ n for ds in datasets])
            if len(z) > 1:
                spacing, extent = float(np.median(np.diff(z))), float(z[-1] - z[0])
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            pass  # no geometry: the series is incomplete (geometry_error says why)
        times = sorted(str(ds.get("AcquisitionTime", "") or "") for ds in datasets)
        acquisition = f"{first.get('FrameOfReferenceUID', '')}@{times[0]}" if times[0] else ""
        return cls(
            uid=str(first.get("SeriesInstanceUID", "")),
            study_uid=str(first.get("StudyInstanceUID", "")),
            patient_id=str(first.get("PatientID", "")),
            study_key=(str(first.get("StudyDate", "") or "99999999"), str(first.get("StudyTime", "") or "")),
            number=number,
            description=description,
            modality=str(first.get("Modality", "") or "").upper(),
            sop_class=str(first.get("SOPClassUID", "")),
            image_type=tuple(str(v).upper() for v in image_type),
            kernel=str(first.get("ConvolutionKernel", "") or ""),
            slices=len(datasets),
            spacing=spacing,
            extent=extent,
            normal=normal,
            acquisition=acquisition,
            geometry_error=error,
            datasets=tuple(datasets),
        )

    def label(self) -> str:
        """How log and error lines name a series (no UID: the number, description, size)."""
        frames = int(self.datasets[0].get("NumberOfFrames", 1) or 1) if self.slices == 1 else 1
        images = f"1 image of {frames} frames" if frames > 1 else f"{self.slices} images"
        size = images + (f", {abs(self.spacing):.3g} mm" if self.spacing else "")
        return f"series {self.number if self.number is not None else '?'} {self.description!r} ({size})"

    @property
    def soft_tissue(self) -> bool:
        return not (SHARP_KERNEL.search(self.kernel.strip()) or re.search(r"(?i)\b(lung|bone)\b", self.description))


def passed_over(info: SeriesInfo, organ: str) -> str | None:
    """Why the rules pass over a series (rule 2), or None for a candidate."""
    if info.modality != "CT":
        return f"{info.modality or 'no modality'} object"
    if info.sop_class in MULTI_FRAME_CT:
        return f"{MULTI_FRAME} {MULTI_FRAME_CT[info.sop_class]} image, which the apps do not read"
    if info.sop_class != CT_IMAGE_STORAGE:
        return "not a CT image (secondary capture, dose screen or other object)"
    if "LOCALIZER" in info.image_type:
        return "localizer"
    if info.image_type[:1] == ("DERIVED",) or DERIVED_WORDS & set(info.image_type[1:]):
        return "derived or secondary series (reformat, MIP, screen capture)"
    if info.normal is not None and abs(info.normal[2]) < AXIAL_COSINE:
        return "not axial (" + ("coronal" if abs(info.normal[1]) >= AXIAL_COSINE else "sagittal or oblique") + ")"
    if region := region_of(info.datasets[0], organ):
        return f"BodyPartExamined {region}"
    if info.geometry_error:
        return f"incomplete: {info.geometry_error.split(': ', 1)[-1]}"
    return None


def _rank(info: SeriesInfo, pattern: re.Pattern | None) -> tuple:
    """Rule 3 as a sort key (smaller is better); equal keys cannot be decided."""
    matches = bool(pattern and pattern.search(info.description))
    return (not matches, not info.soft_tissue, round(abs(info.spacing or 0.0), 2), -round(abs(info.extent)))


_WHY = (
    f"its description matches ${DESCRIPTION_ENV}",
    "soft-tissue kernel",
    "thinnest slices",
    "longest coverage",
)


def best_of(candidates: Sequence[SeriesInfo], what: str = "CT series") -> tuple[SeriesInfo, str]:
    """The candidate rule 3 prefers and why; InputError when the best two are equal on every rule."""
    text = os.environ.get(DESCRIPTION_ENV)
    try:
        pattern = re.compile(text, re.IGNORECASE) if text else None
    except re.error as exc:
        raise InputError(f"${DESCRIPTION_ENV}: not a regular expression ({exc})") from None
    ranked = sorted(candidates, key=lambda s: _rank(s, pattern))
    if len(ranked) == 1:
        return ranked[0], "the only candidate"
    first, second = _rank(ranked[0], pattern), _rank(ranked[1], pattern)
    if first == second:
        tied = [s for s in ranked if _rank(s, pattern) == first]
        raise InputError(
            f"input: {len(tied)} candidate {what} that the selection rules cannot tell apart: "
            + "; ".join(_pick_hint(s, tied) for s in tied)
            + f"; pick one with --series (or ${SERIES_ENV}) UID or NUMBER"
        )
    rule = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    return ranked[0], f"{_WHY[rule]} of {len(ranked)} candidates"


def _pick_hint(info: SeriesInfo, among: Sequence[SeriesInfo]) -> str:
    # The number picks a series when it is unique; otherwise only the UID can (an error line, not a log line).
    unique = info.number is not None and sum(s.number == info.number for s in among) == 1
    return info.label() + ("" if unique else f" UID {info.uid}")


def series_override(value: str | None = None) -> str | None:
    """The series the user named: --series, else $ONCOPLAN_SERIES (MAP runs)."""
    return (value or os.environ.get(SERIES_ENV) or "").strip() or None


def _named(series: Sequence[SeriesInfo], name: str, organ: str) -> SeriesInfo:
    hits = [s for s in series if s.uid == name] or [s for s in series if str(s.number) == name]
    if len(hits) != 1:
        found = "; ".join(_pick_hint(s, series) for s in series if s.modality == "CT")
        problem = "no such series" if not hits else f"{len(hits)} series have that number; give the UID"
        raise InputError(f"--series {name}: {problem}; CT series in the input: {found}")
    (hit,) = hits
    reason = passed_over(hit, organ)
    # A named series may be derived or of any orientation (the outputs are exact for any geometry), but
    # it must be a complete CT image volume of a region that can hold the organ.
    if reason and not reason.startswith(("derived", "not axial")):
        raise InputError(f"--series {name}: {hit.label()} cannot be used: {reason}")
    return hit


@dataclass
class Choice:
    """The series the rules chose, why, and what they passed over (series, reason)."""

    series: SeriesInfo
    why: str
    passed: list[tuple[SeriesInfo, str]] = field(default_factory=list)
    phase: str | None = None
    # The arterial series of the same study and frame of reference beside a portal-venous choice: TACE
    # planning reads both phases (enhancement and washout), the models work on the chosen one's grid.
    arterial: SeriesInfo | None = None

    def log(self) -> None:
        others = f" ({len(self.passed)} other series passed over)" if self.passed else ""
        log.info("CT series chosen: %s: %s%s", self.series.label(), self.why, others)
        for s, reason in self.passed:
            log.debug("passed over %s: %s", s.label(), reason)  # -v: the reasons, series by series


def choose(series: Sequence[SeriesInfo], organ: str, override: str | None = None) -> Choice:
    """The series `organ`'s app works on (the rules above); InputError, one line, when none or undecidable."""
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        found = sorted({s.modality or "?" for s in series})
        raise InputError(f"input: no CT series (found modalities {', '.join(found)})")
    patients = {s.patient_id for s in ct}
    if len(patients) > 1:
        raise InputError(f"input: studies of {len(patients)} patients; give one patient's studies per run")
    if name := series_override(override):
        return Choice(_named(series, name, organ), f"named by --series / ${SERIES_ENV}")
    if organ == "liver":  # TACE: the pre-treatment (earliest) study of the patient
        pre = min({(*s.study_key, s.study_uid) for s in ct})
        if len({s.study_uid for s in ct}) > 1:  # no date in a log line
            log.info("%d CT studies: the earliest is the pre-treatment study", len({s.study_uid for s in ct}))
        ct = [s for s in ct if s.study_uid == pre[2]]
    others = [(s, r) for s in series if s.modality != "CT" and (r := passed_over(s, organ))]
    passed = [(s, r) for s in ct if (r := passed_over(s, organ))]
    candidates = [s for s in ct if not passed_over(s, organ)]
    if not candidates:
        regions = [r.removeprefix("BodyPartExamined ") for _, r in passed if r.startswith("BodyPartExamined")]
        if len(regions) == len(passed):
            raise no_ct_of(organ, regions)
        incomplete = [s for s, r in passed if r.startswith("incomplete")]
        if len(incomplete) == 1 and len(ct) == 1:  # one CT series, and it is broken: its own words
            raise InputError(f"input: {incomplete[0].geometry_error}")
        if multi := [s for s, r in passed if r.startswith(MULTI_FRAME)]:  # --series cannot help: say what can
            others = "".join(f"; passed over {s.label()}: {r}" for s, r in passed if s not in multi)
            raise InputError(
                f"input: no single-frame CT image series to work on: {', '.join(s.label() for s in multi)} "
                f"{'is' if len(multi) == 1 else 'are'} multi-frame ({MULTI_FRAME_CT[multi[0].sop_class]}), which "
                f"the apps do not read; convert to single-frame CT Image Storage (e.g. dcm4che's emf2sf){others}"
            )
        raise InputError(
            "input: no CT series to work on; passed over "
            + "; ".join(f"{s.label()}: {r}" for s, r in passed)
            + f"; name one with --series (or ${SERIES_ENV}) if it is right"
        )
    if organ == "liver":
        from oncoplan.operators.phase_selector import choose_phase

        return choose_phase(candidates, passed + others)
    candidates, earlier = most_recent_study(candidates)
    chosen, why = best_of(candidates)
    if earlier:
        studies = len({s.study_uid for s, _ in earlier}) + 1
        why = f"{why}, in the most recent of {studies} studies with a candidate series"
    return Choice(chosen, why, passed + earlier + others)


UNDATED = "99999999"  # SeriesInfo.study_key of a study without StudyDate


def most_recent_study(candidates: Sequence[SeriesInfo]) -> tuple[list[SeriesInfo], list[tuple[SeriesInfo, str]]]:
    """The candidates of the most recent study (StudyDate, StudyTime), and the earlier studies' candidates with
    why they are passed over; InputError, one line, when dates and times do not order the studies."""
    studies: dict[str, list[SeriesInfo]] = {}
    for s in candidates:
        studies.setdefault(s.study_uid, []).append(s)
    if len(studies) == 1:
        return list(candidates), []
    ranked = sorted(studies.values(), key=lambda ss: ss[0].study_key, reverse=True)
    undated = [ss for ss in ranked if ss[0].study_key[0] == UNDATED]
    if undated or ranked[0][0].study_key == ranked[1][0].study_key:
        problem = "one without StudyDate" if undated else "the two most recent at the same StudyDate and StudyTime"
        listing = "; ".join(
            f"study {str(ss[0].datasets[0].get('StudyDescription', '') or '').strip()!r}: "
            + ", ".join(_pick_hint(s, candidates) for s in ss)
            for ss in ranked
        )
        raise InputError(
            f"input: {len(studies)} CT studies of the patient have a candidate series and no date orders them "
            f"({problem}): {listing}; pick one with --series (or ${SERIES_ENV}) UID or NUMBER"
        )
    reason = "an earlier study (the most recent study with a candidate series is the one worked on)"
    return ranked[0], [(s, reason) for ss in ranked[1:] for s in ss]

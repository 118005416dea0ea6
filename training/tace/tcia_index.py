"""Index a TCIA HCC-TACE-Seg download into a TACE cohort folder that `prepare --labels seg` reads.

    python -m oncoplan.training.tace.tcia_index --dicom ROOT --clinical CSV --out COHORT_DIR

ROOT is a TCIA download in any folder nesting (NBIA/IDC: ``HCC_001/<study>/<series>/*.dcm``, or
flat, or mixed). Only headers are read (pydicom ``stop_before_pixels``); files that are not DICOM
are skipped and counted. Instances are grouped by PatientID / StudyInstanceUID /
SeriesInstanceUID (duplicate SOPInstanceUIDs are kept once).

Studies. A patient's studies that hold CT are ordered by StudyDate (+StudyTime): the first is
``pre`` (before TACE), the second ``post``; a third or later study is reported and ignored (the
collection has one such patient).

Phases. Each CT series of a study becomes NC (non-contrast), AP (arterial) or PVP (portal-venous)
by the first of these rules that decides; the rule is written, per study and phase, in the
``phase_rule`` column. They were derived from the 572 CT series of
``shared/data/hcc_tace_seg/series_index.csv`` (SeriesDescription is upper-cased, runs of spaces
collapsed, and a GE ``Recon N:`` prefix split off):

* ``desc:non-contrast`` -- the description names a non-contrast scan: the word ``PRE`` ("PRE LIVER",
  "Recon 2: PRE LIVER", "PRE", "PRE CONTRAST"; 184 series), NON-CON, W/O, WITHOUT, UNENHANCED.
* ``desc:arterial`` / ``desc:venous`` -- the words ARTERIAL/ART/HAP, VENOUS/PORTAL/PV/PVP
  ("ARTERIAL", "VENOUS": one series each). "(AP)" and "A/P" are **not** arterial: they are the
  abdomen/pelvis scan range, like "(C/A/P)" for chest/abdomen/pelvis -- "Recon 3: LIVER 3 PHASE
  (AP)" exists 20 times.
* ``desc:recon-2`` / ``desc:recon-3`` -- a contrast protocol description (one naming PHASE, C-A-P,
  C/A/P, CAP, WITH CON, ABD, (AP), A/P or CONTRAST) with the prefix "Recon 2:" is AP and with
  "Recon 3:" is PVP: the multi-phase liver protocol's two contrast groups ("Recon 2: LIVER 2 PHASE
  (C/A/P)" + "Recon 3: LIVER 2 PHASE (C/A/P)", 40 studies of this pair alone). In every study of
  the index the "Recon 2:" contrast series has a lower SeriesNumber than the "Recon 3:" one. This
  is also the convention of the synthetic liver cohort (``training/synth/write_liver.py``).

Descriptions that decide nothing -- a contrast protocol without a recon number ("LIVER 3 PHASE
(AP)", "3 PHASE LIVER (ABD)", "C-A-P", "LIVER 2PHASE CAP"; 41 series), scanner presets ("2.5
STANDARD", "2.5 SOFT"; 47) and empty descriptions (6) -- go to the fallbacks (a series that a
rule gives a phase another series already took by the same kind of rule, lower SeriesNumber first,
is left out and reported):

* ``timing`` -- AcquisitionTime minus ContrastBolusStartTime: <= 50 s AP, <= 150 s PVP, later a
  delayed phase (not used).
* ``order:time`` / ``order:number`` -- the series left, in AcquisitionTime order (SeriesNumber
  where a time is missing in the study): the first takes NC if NC is free, nothing marks it as
  contrast enhanced (a contrast description, ContrastBolusAgent or ContrastBolusStartTime), it
  comes before every series already given AP or PVP, and it is not the study's only candidate for
  the contrast scan (a liver exam always has one). The others take the free contrast phases in
  order, keeping the *later* ones, so a lone contrast series is PVP (the routine portal-venous
  scan; 51 real studies have two CT series, mostly NC + one contrast scan). Series left over are
  listed in the report.

A description-decided phase that the bolus timing contradicts is kept and reported as a warning.
Localizer series (ImageType LOCALIZER) are ignored.

SEG. For each study the DICOM-SEG is chosen by SeriesDescription, first matching pattern of
``--seg-prefer`` (default ``Segmentation,AIMI*corrected*,AIMI*,*``: the collection's own
"Segmentation", then the AIMI radiologist-corrected, then the AIMI AI segmentations,
DOI 10.5281/zenodo.8345959), then the SEG referencing the PVP, AP, NC series in that order. A
SEG is usable only if it references (ReferencedSeriesSequence, or referenced/source SOP instances)
a CT series of its own study and has a segment that `prepare` maps to liver or tumor. In the real
collection "Segmentation" exists for the pre study only; post studies have AIMI SEGs or none.

Clinical. The table is read with :func:`oncoplan.training.tcia_clinical.load_clinical` and joined
by ``TCIA_ID`` = PatientID; every column keeps its TCIA name, except that ``chemotherapy`` holds the
protocol in action-base keyword form (``protocol``, Lipiodol added, as in the synthetic cohort's
``cohort.csv``, which `prepare` parses) and the original free text moves to
``chemotherapy_regimen``. A patient without a clinical row is kept (empty columns) and warned about.

Output (all or nothing: written to a scratch folder, renamed at the end)::

    COHORT_DIR/cohort.csv          one row per usable patient (columns below)
    COHORT_DIR/index_report.md     counts, included patients, excluded patients with the reason, warnings
    COHORT_DIR/series.csv          every CT and SEG series found, with its study role, phase and rule
    COHORT_DIR/<TCIA_ID>/<pre|post>_<NC|AP|PVP>/NNNNN.dcm   symlinks to the original CT files
    COHORT_DIR/<TCIA_ID>/<pre|post>_seg.dcm                 symlink to the chosen SEG file

Pixel data are never copied: the series folders hold **symbolic links with absolute targets** to
the original files, one folder per series (so a download folder mixing several series still reads
as one series per folder). The cohort folder can be moved; the download must stay where it was.
``cohort.csv`` columns: ``TCIA_ID``, ``<pre|post>_<NC|AP|PVP>_series`` and ``pre_seg``/``post_seg``
(paths relative to COHORT_DIR, empty where a phase is absent), ``phase_rule``,
``<pre|post>_study_date``, ``<pre|post>_study_uid``, ``<pre|post>_seg_description``, ``protocol``,
then the clinical columns. Patients without a pre/post pair, without an AP or PVP phase in both
studies, or without a usable SEG in either study are not in ``cohort.csv``: ``index_report.md``
lists each with its reason.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from oncoplan.errors import InputError
from oncoplan.tace.phases import (
    PHASES,
    STUDIES,
    CTSeries,
    dicom_seconds,
    resolve_phases,
)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DEFAULT_SEG_PREFERENCE = ("Segmentation", "AIMI*corrected*", "AIMI*", "*")
PREPARE_PHASES = ("PVP", "AP")  # the phases `prepare` registers; one must be in both studies

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
    "StudyTime",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "ImageType",
    "AcquisitionTime",
    "ContrastBolusAgent",
    "ContrastBolusStartTime",
]
# ---------------------------------------------------------------------------------------------
# Scanning the download
# ---------------------------------------------------------------------------------------------


@dataclass
class SegSeries:
    uid: str
    path: str
    number: int | None = None
    description: str = ""
    referenced_series: set[str] = field(default_factory=set)
    referenced_instances: set[str] = field(default_factory=set)
    segment_labels: list[str] = field(default_factory=list)
    instances: int = 1
    note: str = ""


@dataclass
class Study:
    uid: str
    date: str = ""
    time_s: float | None = None
    ct: dict[str, CTSeries] = field(default_factory=dict)
    seg: dict[str, SegSeries] = field(default_factory=dict)
    phases: dict[str, CTSeries] = field(default_factory=dict)
    role: str = ""

    def when(self) -> str:
        d = self.date
        return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else (d or "no date")


@dataclass
class Scan:
    root: Path
    patients: dict[str, dict[str, Study]] = field(default_factory=dict)
    files: int = 0
    not_dicom: int = 0
    unreadable: list[str] = field(default_factory=list)
    duplicates: int = 0
    other_modalities: Counter = field(default_factory=Counter)
    sop_series: dict[str, str] = field(default_factory=dict)  # CT SOPInstanceUID -> SeriesInstanceUID


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _seg_references(ds) -> tuple[set[str], set[str]]:
    series, instances = set(), set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        if item.get("SeriesInstanceUID"):
            series.add(str(item.SeriesInstanceUID))
        for ref in item.get("ReferencedInstanceSequence", []) or []:
            if ref.get("ReferencedSOPInstanceUID"):
                instances.add(str(ref.ReferencedSOPInstanceUID))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        for derivation in frame.get("DerivationImageSequence", []) or []:
            for source in derivation.get("SourceImageSequence", []) or []:
                if source.get("ReferencedSOPInstanceUID"):
                    instances.add(str(source.ReferencedSOPInstanceUID))
    return series, instances


def scan_dicom(root: Path, quiet: bool = True) -> Scan:
    """Read the headers of every file under `root` and group CT and SEG series by patient and study."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: DICOM folder not found")
    paths = sorted(Path(d) / f for d, _, files in os.walk(root) for f in files)
    scan = Scan(root)
    if not paths:
        raise InputError(f"{root}: folder holds no files")
    seen: set[str] = set()
    for path in tqdm(paths, desc="headers", unit="file", disable=quiet):
        scan.files += 1
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except InvalidDicomError:
            scan.not_dicom += 1
            continue
        except Exception as exc:  # pydicom raises many types for a broken file
            scan.unreadable.append(f"{path} ({type(exc).__name__})")
            continue
        modality = _text(ds, "Modality").upper()
        is_seg = modality == "SEG" or _text(ds, "SOPClassUID") == SEG_SOP_CLASS
        if modality != "CT" and not is_seg:
            scan.other_modalities[modality or "no Modality"] += 1
            continue
        keys = [_text(ds, k) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(keys):
            scan.unreadable.append(f"{path} (no PatientID/Study/Series/SOP Instance UID)")
            continue
        patient, study_uid, series_uid, sop = keys
        if sop in seen:
            scan.duplicates += 1
            continue
        seen.add(sop)
        study = scan.patients.setdefault(patient, {}).setdefault(study_uid, Study(study_uid))
        if is_seg:
            try:
                full = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for a broken file
                scan.unreadable.append(f"{path} ({type(exc).__name__})")
                continue
            if series_uid in study.seg:
                study.seg[series_uid].instances += 1
                continue
            ref_series, ref_instances = _seg_references(full)
            labels = [
                " ".join(_text(item, k) for k in ("SegmentLabel", "SegmentDescription")).strip()
                for item in full.get("SegmentSequence", []) or []
            ]
            study.seg[series_uid] = SegSeries(
                series_uid,
                str(path),
                _int(ds.get("SeriesNumber")),
                _text(ds, "SeriesDescription"),
                ref_series,
                ref_instances,
                labels,
            )
            continue
        if not study.date and _text(ds, "StudyDate"):
            study.date, study.time_s = _text(ds, "StudyDate"), dicom_seconds(ds.get("StudyTime"))
        series = study.ct.get(series_uid)
        if series is None:
            series = study.ct[series_uid] = CTSeries(series_uid, _int(ds.get("SeriesNumber")))
        if not series.description:
            series.description = _text(ds, "SeriesDescription")
        acquisition = dicom_seconds(ds.get("AcquisitionTime"))
        if acquisition is not None and (series.acquisition_s is None or acquisition < series.acquisition_s):
            series.acquisition_s = acquisition
        if series.bolus_start_s is None:
            series.bolus_start_s = dicom_seconds(ds.get("ContrastBolusStartTime"))
        series.contrast_agent = series.contrast_agent or _text(ds, "ContrastBolusAgent")
        image_type = ds.get("ImageType") or []
        image_type = [image_type] if isinstance(image_type, str) else list(image_type)
        series.localizer = series.localizer or any("LOCALIZER" in str(v).upper() for v in image_type)
        series.files.append((_int(ds.get("InstanceNumber")) or 0, str(path)))
        scan.sop_series[sop] = series_uid
    n_dicom = scan.files - scan.not_dicom - len(scan.unreadable)
    if n_dicom <= 0:
        raise InputError(f"{root}: no readable DICOM files among {scan.files} files")
    if not any(study.ct for studies in scan.patients.values() for study in studies.values()):
        others = dict(scan.other_modalities) | {
            "SEG": sum(len(s.seg) for studies in scan.patients.values() for s in studies.values())
        }
        found = ", ".join(f"{k} x{v}" for k, v in others.items() if v) or "none usable"
        raise InputError(f"{root}: no CT series among {n_dicom} DICOM files ({found})")
    return scan


# ---------------------------------------------------------------------------------------------
# One patient
# ---------------------------------------------------------------------------------------------


def _matches(description: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(description.lower(), pattern.lower())


def choose_seg(study: Study, preference: Sequence[str], sop_series: dict[str, str]) -> SegSeries | None:
    """The study's DICOM-SEG by `preference` (see the module doc); sets ``note`` on rejected ones."""
    from oncoplan.training.tace.preprocess import segment_label

    phase_of = {s.uid: s.phase for s in study.ct.values()}
    order = {"PVP": 0, "AP": 1, "NC": 2}
    ranked = []
    for seg in study.seg.values():
        seg.note = ""
        rank = next((i for i, p in enumerate(preference) if _matches(seg.description, p)), None)
        refs = seg.referenced_series | {sop_series[i] for i in seg.referenced_instances if i in sop_series}
        ct_refs = refs & set(study.ct)
        if rank is None:
            seg.note = "description matches no --seg-prefer pattern"
        elif not ct_refs:
            seg.note = "references no CT series of this study"
        elif not any(segment_label(_Label(label)) for label in seg.segment_labels):
            seg.note = "no liver or tumor segment"
        else:
            best = min(order.get(phase_of.get(uid) or "", 3) for uid in ct_refs)
            ranked.append(((rank, best, -(seg.number or 0), seg.uid), seg))
    if not ranked:
        return None
    ranked.sort(key=lambda item: item[0])
    for _, seg in ranked[1:]:
        seg.note = f"not chosen ({ranked[0][1].description!r} preferred)"
    return ranked[0][1]


@dataclass
class _Label:
    """Adapter: `prepare` matches segments on SegmentLabel/SegmentDescription attributes."""

    SegmentLabel: str


@dataclass
class PatientResult:
    patient: str
    studies: list[Study]
    pre: Study | None = None
    post: Study | None = None
    segs: dict[str, SegSeries] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def index_patient(
    patient: str, studies: dict[str, Study], preference: Sequence[str], sop_series: dict[str, str]
) -> PatientResult:
    """Pre/post studies, phases and SEGs of one patient; `reasons` is non-empty when it is unusable."""
    result = PatientResult(patient, list(studies.values()))
    with_ct = [s for s in studies.values() if s.ct]
    for study in studies.values():
        if not study.ct:
            study.role = "ignored"
            result.warnings.append(f"study {study.uid} holds no CT ({len(study.seg)} SEG); ignored")
    if not with_ct:
        result.reasons.append("no CT study")
        return result
    undated = [s for s in with_ct if len(s.date) != 8 or not s.date.isdigit()]
    if undated:
        result.reasons.append(f"StudyDate missing or malformed on study {undated[0].uid}")
        return result
    with_ct.sort(key=lambda s: (s.date, s.time_s if s.time_s is not None else -1.0, s.uid))
    if len(with_ct) < 2:
        result.reasons.append(f"only one CT study ({with_ct[0].when()}): no pre/post pair")
    for extra in with_ct[2:]:
        extra.role = "ignored"
        result.warnings.append(f"third CT study {extra.when()} ({extra.uid}) ignored")
    if len(with_ct) >= 2 and (with_ct[0].date, with_ct[0].time_s) == (with_ct[1].date, with_ct[1].time_s):
        result.reasons.append(f"two CT studies on {with_ct[0].when()} with the same StudyTime: pre/post ambiguous")
    for role, study in zip(STUDIES, with_ct[:2], strict=False):
        study.role = role
        study.phases = resolve_phases(study.ct.values())
        setattr(result, role, study)
        for s in study.ct.values():
            if s.warning:
                result.warnings.append(f"{role} {s.label()}: {s.warning}")
    if result.reasons:
        return result
    pre, post = result.pre, result.post
    if not any(p in pre.phases and p in post.phases for p in PREPARE_PHASES):
        result.reasons.append(
            f"no AP or PVP phase in both studies (pre: {', '.join(pre.phases) or 'none'}; "
            f"post: {', '.join(post.phases) or 'none'})"
        )
    for role, study in (("pre", pre), ("post", post)):
        seg = choose_seg(study, preference, sop_series)
        if seg is None:
            why = "; ".join(f"{s.description!r}: {s.note}" for s in study.seg.values()) or "none in the study"
            result.reasons.append(f"{role} study {study.when()} has no usable SEG ({why})")
        else:
            result.segs[role] = seg
            if seg.instances > 1:
                result.warnings.append(f"{role} SEG {seg.description!r} has {seg.instances} instances; first used")
    return result


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _link(target: str, link: Path) -> None:
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(target), link)
    except OSError as exc:
        raise InputError(f"{link}: cannot create a symbolic link ({exc.strerror or exc})") from None


def _cohort_row(result: PatientResult, out: Path, clinical: pd.DataFrame | None) -> dict[str, object]:
    row: dict[str, object] = {"TCIA_ID": result.patient}
    rules = []
    for role in STUDIES:
        study: Study = getattr(result, role)
        for phase in PHASES:
            series = study.phases.get(phase)
            row[f"{role}_{phase}_series"] = ""
            if series is None:
                continue
            rel = f"{result.patient}/{role}_{phase}"
            for i, (_, path) in enumerate(sorted(series.files)):
                _link(path, out / rel / f"{i:05d}.dcm")
            row[f"{role}_{phase}_series"] = rel
            rules.append(f"{role}_{phase}={series.rule}")
    for role in STUDIES:
        rel = f"{result.patient}/{role}_seg.dcm"
        _link(result.segs[role].path, out / rel)
        row[f"{role}_seg"] = rel
    row["phase_rule"] = "; ".join(rules)
    for role in STUDIES:
        study = getattr(result, role)
        row[f"{role}_study_date"] = study.when()
        row[f"{role}_study_uid"] = study.uid
        row[f"{role}_seg_description"] = result.segs[role].description
    row["protocol"] = ""
    if clinical is not None and result.patient in clinical.index:
        record = clinical.loc[result.patient]
        protocol = record["protocol"]
        row["protocol"] = protocol if isinstance(protocol, str) else ""
        for column, value in record.items():
            if column == "chemotherapy":
                row["chemotherapy_regimen"] = value
                row["chemotherapy"] = row["protocol"]
            elif column != "protocol":
                row[column] = value
    return row


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _report(
    scan: Scan, results: list[PatientResult], clinical_path: Path, clinical: pd.DataFrame, preference: Sequence[str]
) -> str:
    kept = [r for r in results if not r.reasons]
    dropped = [r for r in results if r.reasons]
    n_ct = sum(len(s.ct) for studies in scan.patients.values() for s in studies.values())
    n_seg = sum(len(s.seg) for studies in scan.patients.values() for s in studies.values())
    lines = [
        "# TCIA HCC-TACE-Seg index",
        "",
        f"- DICOM root: `{scan.root}`",
        f"- clinical table: `{clinical_path}`",
        f"- files: {scan.files} ({scan.not_dicom} not DICOM, {len(scan.unreadable)} unreadable, "
        f"{scan.duplicates} duplicate instances skipped)",
        f"- series: {n_ct} CT, {n_seg} SEG"
        + (f"; other modalities ignored: {dict(scan.other_modalities)}" if scan.other_modalities else ""),
        f"- patients: {len(results)} with images, {len(kept)} in `cohort.csv`, {len(dropped)} excluded",
        f"- SEG preference: {', '.join(repr(p) for p in preference)}",
        "- phase and SEG rules: `python -m oncoplan.training.tace.tcia_index --help`; "
        "the rule that decided each phase is in `cohort.csv` column `phase_rule` and in `series.csv`.",
        "- series folders hold symbolic links to the original files (no pixel data copied).",
        "",
        "## Included",
        "",
        "| TCIA_ID | pre | post | pre phases | post phases | pre SEG | post SEG |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in kept:
        phases = [", ".join(f"{p} ({st.phases[p].rule})" for p in PHASES if p in st.phases) for st in (r.pre, r.post)]
        lines.append(
            f"| {r.patient} | {r.pre.when()} | {r.post.when()} | {phases[0]} | {phases[1]} | "
            f"{_cell(r.segs['pre'].description)} | {_cell(r.segs['post'].description)} |"
        )
    lines += ["", "## Excluded", ""]
    if dropped:
        lines += ["| TCIA_ID | reason |", "|---|---|"]
        lines += [f"| {r.patient} | {_cell('; '.join(r.reasons))} |" for r in dropped]
    else:
        lines.append("None.")
    warnings = [f"{r.patient}: {w}" for r in results for w in r.warnings]
    for r in results:
        for study in r.studies:
            if study.role not in STUDIES:
                continue
            for s in study.ct.values():
                if s.phase is None:
                    warnings.append(f"{r.patient}: {study.role} CT {s.label()} unused: {s.note}")
            for seg in study.seg.values():
                if seg.note and not seg.note.startswith("not chosen"):
                    warnings.append(f"{r.patient}: {study.role} SEG {seg.description!r} rejected: {seg.note}")
        if r.patient not in clinical.index:
            warnings.append(f"{r.patient}: no row in the clinical table (clinical columns left empty)")
    without_images = sorted(set(clinical.index) - {r.patient for r in results})
    if without_images:
        shown = ", ".join(without_images[:20]) + (" ..." if len(without_images) > 20 else "")
        warnings.append(f"{len(without_images)} clinical rows have no images in the download: {shown}")
    warnings += [f"unreadable: {u}" for u in scan.unreadable[:20]]
    lines += ["", "## Warnings", ""]
    lines += [f"- {_cell(w)}" for w in warnings] or ["None."]
    return "\n".join(lines) + "\n"


def _series_table(results: list[PatientResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        for study in r.studies:
            for s in sorted(study.ct.values(), key=lambda s: (s.number or 0, s.uid)):
                rows.append(
                    {
                        "TCIA_ID": r.patient,
                        "study": study.role or "ignored",
                        "study_date": study.when(),
                        "modality": "CT",
                        "series_number": s.number,
                        "description": s.description,
                        "instances": len(s.files),
                        "phase": s.phase or "",
                        "rule": s.rule,
                        "note": s.note or s.warning,
                        "StudyInstanceUID": study.uid,
                        "SeriesInstanceUID": s.uid,
                    }
                )
            for seg in study.seg.values():
                chosen = r.segs.get(study.role) is seg
                rows.append(
                    {
                        "TCIA_ID": r.patient,
                        "study": study.role or "ignored",
                        "study_date": study.when(),
                        "modality": "SEG",
                        "series_number": seg.number,
                        "description": seg.description,
                        "instances": seg.instances,
                        "phase": "",
                        "rule": "chosen" if chosen else "",
                        "note": seg.note,
                        "StudyInstanceUID": study.uid,
                        "SeriesInstanceUID": seg.uid,
                    }
                )
    return pd.DataFrame(rows)


def build_index(
    dicom: Path,
    clinical_csv: Path,
    out: Path,
    seg_preference: Sequence[str] = DEFAULT_SEG_PREFERENCE,
    quiet: bool = True,
) -> list[PatientResult]:
    """Index `dicom` into the cohort folder `out` (all or nothing); returns every patient's result."""
    from oncoplan.fsio import atomic_output_dir
    from oncoplan.training.tcia_clinical import load_clinical

    dicom, clinical_csv = Path(dicom), Path(clinical_csv)
    preference = [p.strip() for p in seg_preference if p.strip()]
    if not preference:
        raise InputError("--seg-prefer: give at least one SeriesDescription pattern")
    try:
        clinical = load_clinical(clinical_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    scan = scan_dicom(dicom, quiet)
    results = [
        index_patient(pid, studies, preference, scan.sop_series) for pid, studies in sorted(scan.patients.items())
    ]
    kept = [r for r in results if not r.reasons]
    if not kept:
        first = "; ".join(f"{r.patient}: {r.reasons[0]}" for r in results[:3])
        raise InputError(f"{dicom}: none of {len(results)} patients has a usable pre/post CT pair with SEG ({first})")
    with atomic_output_dir(Path(out)) as scratch:
        rows = [_cohort_row(r, scratch, clinical) for r in kept]
        pd.DataFrame(rows).to_csv(scratch / "cohort.csv", index=False)
        _series_table(results).to_csv(scratch / "series.csv", index=False)
        (scratch / "index_report.md").write_text(_report(scan, results, clinical_csv, clinical, preference))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oncoplan.training.tace.tcia_index",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dicom", type=Path, required=True, help="root of the TCIA download (any nesting)")
    parser.add_argument("--clinical", type=Path, required=True, help="HCC-TACE-Seg clinical table (CSV)")
    parser.add_argument("--out", type=Path, required=True, help="new cohort folder (must not exist or be empty)")
    parser.add_argument(
        "--seg-prefer",
        default=",".join(DEFAULT_SEG_PREFERENCE),
        help="comma-separated SeriesDescription patterns (fnmatch, case-insensitive), best first; "
        "SEGs matching none are not used (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        results = build_index(args.dicom, args.clinical, args.out, args.seg_prefer.split(","), args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kept = sum(not r.reasons for r in results)
    print(
        f"{kept} of {len(results)} patients indexed into {args.out / 'cohort.csv'} "
        f"({len(results) - kept} excluded: see {args.out / 'index_report.md'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

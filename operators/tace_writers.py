"""Writers of the TACE planning app, one file each, all in the input CT's study:

* ``tace_plan_sr.dcm`` - Comprehensive SR: the chosen protocol, every ranked candidate with its
  items (CODE), rank and predicted risk mean and SD (NUM), referencing the input series (evidence);
* ``tace_post_seg.dcm`` - DICOM-SEG of the top protocol's simulated post-treatment tumor on the
  input CT (viable tumor, necrosis, Lipiodol deposit);
* ``tace_report_pdf.dcm`` + ``report.pdf`` - the PDF report, encapsulated and as a file;
* ``plan.json`` - the plan for programs (ranked protocols, risks with spread, cost, settings).

Every object says research use only. Concepts without a standard code use the private coding
scheme ``99ONCOPLAN`` (declared in the SR's Coding Scheme Identification Sequence).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from oncoplan import __version__
from oncoplan.encapsulated_pdf import encapsulated_pdf, write_encapsulated_pdf
from oncoplan.fsio import atomic_path
from oncoplan.operators.file_writer import FileWriterOperator
from oncoplan.operators.tace_planning import TacePlan
from oncoplan.planner.search import search_summary
from oncoplan.planner.separation import separation_text
from oncoplan.seg import RESEARCH_USE, Algorithm, SegmentSpec, seg_dataset, write_seg

log = logging.getLogger(__name__)
MODEL_NAME = "OncoPlan MeWM TACE planner"
SR_CANDIDATES = 20  # ranked protocols the SR lists: the whole base would be 1,404 (some 11,000 content items)
SCHEME = "99ONCOPLAN"
DESCRIPTION = f"OncoPlan TACE plan ({RESEARCH_USE})"
RESEARCH_NOTE = (
    "RESEARCH USE ONLY - not a medical device, not for clinical decisions. Protocols ranked by the risk a "
    "survival model predicts for outcomes simulated by a world model (MeWM); risks compare candidates of "
    "this study only."
)
MORPH = Code("49755003", "SCT", "Morphologically Altered Structure")
SEGMENTS = {  # label value on the plan's map -> segment (SNOMED CT codes, as the synthetic ground truth)
    2: SegmentSpec("Viable tumor (simulated)", MORPH, codes.SCT.Neoplasm),
    3: SegmentSpec("Necrosis (simulated)", MORPH, codes.SCT.Necrosis),
    4: SegmentSpec("Lipiodol deposit (simulated)", codes.SCT.PhysicalObject, codes.SCT.ContrastAgent),
}


def _own(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning)


REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
CHOSEN = _own("TACE-CHOSEN", "Chosen TACE protocol")
CANDIDATE = _own("TACE-CANDIDATE", "Candidate TACE protocol")
PROTOCOL = _own("TACE-PROTOCOL", "TACE protocol")
ITEM = _own("TACE-ITEM", "TACE protocol item")
RANK = _own("TACE-RANK", "Rank by predicted risk")
MEAN_RISK = _own("TACE-RISK-MEAN", "Mean predicted risk")
SD_RISK = _own("TACE-RISK-SD", "Standard deviation of predicted risk")
OUTCOMES = _own("TACE-OUTCOMES", "Simulated outcomes")
SEARCH = _own("TACE-SEARCH", "Planning search settings")
CLINICAL = _own("TACE-CLINICAL", "Clinical data used for planning")
IMPUTED = _own("TACE-IMPUTED", "Clinical covariates imputed with the training median")
FLAG = _own("TACE-FLAG", "TACE contraindication or caution")
POLICY = _own("TACE-POLICY", "Planning policy")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def action_code(name: str) -> hd.sr.CodedConcept:
    """A drug or embolic of the action base as a code of the private scheme (D01.., E01..)."""
    from oncoplan.tace.actions import DRUGS, EMBOLICS

    if name in DRUGS:
        return _own(f"TACE-D{DRUGS.index(name) + 1:02d}", name)
    return _own(f"TACE-E{EMBOLICS.index(name) + 1:02d}", name)


def _text(name, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type=CONTAINS)


def _num(name, value: float) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=float(f"{value:.6g}"), unit=NO_UNITS, relationship_type=CONTAINS)


def _container(name, items) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type=CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _candidate(rank: int, ranked, name=CANDIDATE) -> hd.sr.ContainerContentItem:
    items = [_num(RANK, rank), _text(PROTOCOL, str(ranked.protocol))]
    items += [hd.sr.CodeContentItem(ITEM, action_code(a), CONTAINS) for a in ranked.protocol.items]
    items += [_num(MEAN_RISK, ranked.mean_risk), _num(SD_RISK, ranked.std_risk)]
    items += [_num(OUTCOMES, len(ranked.sample_risks))]
    return _container(name, items)


def clinical_lines(plan: TacePlan) -> dict[str, list[str]]:
    """The clinical data, imputation, guideline flags and policy as the SR and the PDF write them."""
    c, p = plan.clinical, plan.policy
    lines: dict[str, list[str]] = {"clinical": [], "imputed": [], "flags": [], "policy": []}
    if c:
        given = ", ".join(f"{k} {_show(v)}" for k, v in c.get("given", {}).items()) or "none"
        cp = c.get("child_pugh", {})
        cp_text = f"; Child-Pugh {cp['class']} ({cp['how']})" if cp.get("class") else ""
        lines["clinical"].append(f"Clinical data from {c.get('source', 'none')}: {given}{cp_text}")
        used = c.get("model_covariates", {})
        if used:
            parts = [f"{v['reads_as']}{' (imputed: training median)' if v['imputed'] else ''}" for v in used.values()]
            lines["clinical"].append("Risk model covariates: " + "; ".join(parts))
        lines["imputed"].append(c.get("imputed_note", ""))
        if c.get("ignored_keys"):
            lines["clinical"].append("Keys naming no clinical field (ignored): " + ", ".join(c["ignored_keys"]))
        lines["flags"] = [f"{f['level'].upper()}: {f['text']} ({f['guideline']})" for f in c.get("flags", [])]
    if p:
        text = f"Policy: {p.get('label', 'offline')}; candidates proposed by {p.get('planned_by', 'offline')}"
        if p.get("fallback"):
            text += f" (fell back to the offline policy: {p['fallback']})"
        lines["policy"].append(text)
    return {k: [line for line in v if line] for k, v in lines.items()}


def _show(value) -> str:
    return "; ".join(value) if isinstance(value, list) else str(value)


def plan_sr(plan: TacePlan, series_number: int = 901) -> hd.sr.ComprehensiveSR:
    """The plan as a Comprehensive SR in the CT's study; see the module doc."""
    s = plan.settings.search
    ct = list(plan.volume.datasets)
    algorithm = f"{MODEL_NAME} {__version__} (" + ", ".join(f"{k} {v}" for k, v in plan.bundles.items()) + ")"
    ranked = plan.plan.ranked
    settings = (
        f"{search_summary(plan.plan.method, s)}, seed {s.seed} ({plan.settings.label}); {len(ranked)} protocols "
        f"scored, the first {min(len(ranked), SR_CANDIDATES)} listed; pre-treatment series "
        f"{ct[0].SeriesInstanceUID} ({plan.phase}); pick: {plan.plan.pick}, {separation_text(plan.plan.separation)}"
    )
    warning = [_text(codes.DCM.Comment, f"Warning: {plan.segmentation_warning}")] if plan.segmentation_warning else []
    lines = clinical_lines(plan)
    concepts = {"flags": FLAG, "clinical": CLINICAL, "imputed": IMPUTED, "policy": POLICY}
    patient = [_text(concepts[k], line) for k in ("flags", "clinical", "imputed", "policy") for line in lines[k]]
    items = [
        _text(codes.DCM.Comment, RESEARCH_NOTE),
        *warning,
        *patient,
        hd.sr.CodeContentItem(codes.DCM.ProcedureReported, codes.SCT.TranscatheterTherapyForEmbolization, CONTAINS),
        _text(codes.DCM.AlgorithmName, algorithm),
        _text(SEARCH, settings),
        _candidate(1, plan.best, CHOSEN),
        *[_candidate(i, r) for i, r in enumerate(ranked[:SR_CANDIDATES], start=1)],
    ]
    root = hd.sr.ContainerContentItem(name=REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=ct,
        content=root,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="OncoPlan",
        series_description=DESCRIPTION,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "OncoPlan TACE planning concepts"
    scheme.CodingSchemeResponsibleOrganization = "OncoPlan (research use only)"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def plan_json(plan: TacePlan) -> dict:
    ds = plan.volume.datasets[0]
    return {
        "research_use_only": True,
        "note": RESEARCH_NOTE,
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "series_description": str(ds.get("SeriesDescription", "")),
        "phase": plan.phase,
        "lesion_features": plan.lesion_features,
        "settings_name": plan.settings.label,
        "bundles": plan.bundles,
        "stage_timing_s": {k: round(v, 3) for k, v in plan.timing_s.items()},
        "model_timing_s": {k: round(v, 3) for k, v in plan.model_timing_s.items()},
        "simulated_post_treatment_voxels": {SEGMENTS[k].label: int((plan.post_labels == k).sum()) for k in SEGMENTS},
        "segmentation": {
            **{f"{k}_cm3": round(v, 1) for k, v in plan.segmented_cm3.items()},
            "warning": plan.segmentation_warning,
        },
        "clinical": plan.clinical,
        "contraindications": [f for f in plan.flags if f["level"] == "contraindication"],
        "cautions": [f for f in plan.flags if f["level"] == "caution"],
        "policy": plan.policy,
        **plan.plan.to_dict(),
    }


class _PlanWriter(FileWriterOperator):
    """Receives the plan on port ``plan``."""

    port = "plan"


class TacePlanSRWriterOperator(_PlanWriter):
    """Writes ``tace_plan_sr.dcm`` (Comprehensive SR)."""

    def write(self, plan: TacePlan) -> list[Path]:
        path = self.output_folder / "tace_plan_sr.dcm"
        with atomic_path(path) as tmp:
            plan_sr(plan).save_as(tmp)
        return [path]


class TaceSegWriterOperator(_PlanWriter):
    """Writes ``tace_post_seg.dcm``: the top protocol's simulated tumor compartments on the input CT."""

    def write(self, plan: TacePlan) -> list[Path]:
        masks = [plan.post_labels == value for value in SEGMENTS]
        seg = seg_dataset(
            masks,
            list(SEGMENTS.values()),
            plan.volume.datasets,
            f"OncoPlan TACE simulated post-treatment tumor ({RESEARCH_USE})",
            series_number=902,
            algorithm=Algorithm(MODEL_NAME, __version__),
            content_label="TACE_SIMULATION",
            content_description=f"simulated after {plan.best.protocol}",
        )
        if seg is None:
            log.warning("the simulated post-treatment tumor is empty: no DICOM-SEG written")
            return []
        return [write_seg(seg, self.output_folder / "tace_post_seg.dcm")]


class TaceReportWriterOperator(_PlanWriter):
    """Writes the PDF report as ``report.pdf`` and as ``tace_report_pdf.dcm`` (Encapsulated PDF)."""

    def write(self, plan: TacePlan) -> list[Path]:
        from oncoplan.operators.tace_report import render_report

        pdf = render_report(plan)
        path = self.output_folder / "report.pdf"
        with atomic_path(path) as tmp:
            tmp.write_bytes(pdf)
        ds = encapsulated_pdf(pdf, plan.volume.datasets, "TACE plan report", DESCRIPTION, software_versions=__version__)
        return [path, write_encapsulated_pdf(ds, self.output_folder / "tace_report_pdf.dcm")]


class TacePlanJSONWriterOperator(_PlanWriter):
    """Writes ``plan.json``."""

    def write(self, plan: TacePlan) -> list[Path]:
        path = self.output_folder / "plan.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(_finite(plan_json(plan)), indent=1, default=_jsonable, allow_nan=False))
        return [path]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value):
    """`value` with every non-finite float as None: strict JSON (RFC 8259 has no NaN or Infinity, and
    strict parsers, JavaScript's among them, reject a file that holds one)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value

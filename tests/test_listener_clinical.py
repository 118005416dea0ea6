"""The listener carries a study's clinical data to the TACE app: a text SR a hospital system stores with
the CT reaches the route's staged input, the app plans with its values (none imputed) and flags the
contraindication it holds, in plan.json and in the SR delivered to the PACS."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pydicom
import pytest

from .pacs import (
    Orthanc,
    free_port,
    listener_config,
    listener_logs,
    rows,
    running,
    send_and_wait_for_the_job,
    wait_for,
    with_tace_route,
)

pytestmark = pytest.mark.integration

# As a hospital system writes it into a text SR: name: value pairs, units spelled out.
CLINICAL_TEXT = (
    "Child-Pugh: C; AFP: 850 ng/mL; vascular invasion: yes; main portal vein invasion: yes; "
    "extrahepatic spread: no; ECOG: 1; BCLC: C"
)
GIVEN = {
    "child_pugh": "C",
    "afp_ng_ml": 850.0,
    "vascular_invasion": True,
    "main_portal_vein_invasion": True,
    "extrahepatic_spread": False,
    "ecog": 1,
    "bclc": "C",
}


def _items(item):
    for child in item.get("ContentSequence") or []:
        yield child
        yield from _items(child)


def _study_series(orthanc: Orthanc, study_uid: str) -> list[dict]:
    return [
        s
        for s in orthanc.series()
        if orthanc.get(f"/studies/{s['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]


def test_a_text_sr_with_the_study_gives_the_tace_route_its_clinical_data_and_flags(
    tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pre-treatment liver study and a text SR with the patient's clinical data (another series of the
    same study, as a hospital system adds it) arrive over DICOM; the TACE route (real app, warm worker,
    tiny random-weight bundles) reads the SR from the job's staged input: plan.json gives the SR as the
    source, the SR's values (not the case's own clinical.json, which DICOM cannot carry), no covariate
    imputed, Child-Pugh C and main portal vein invasion as contraindications; the plan SR delivered to
    Orthanc carries the same flags; the listener's lines name no patient, ID or UID."""
    from oncoplan.training.synth.cohort import generate_cohort

    from .helpers import cohort_rows, text_sr, tiny_tace_models

    monkeypatch.delenv("ONCOPLAN_CLINICAL", raising=False)  # the warm worker inherits the environment
    models = tiny_tace_models(tmp_path / "models")
    cohort = generate_cohort("liver", tmp_path / "c", 1, seed=8800, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    pre = sorted((cohort / row["TCIA_ID"] / "dicom" / "pre").rglob("*.dcm"))
    first = pydicom.dcmread(pre[0])
    text_sr(first, CLINICAL_TEXT).save_as(tmp_path / "clinical_sr.dcm")
    study_uid, patient_id = str(first.StudyInstanceUID), str(first.PatientID)

    port, spool = free_port(), tmp_path / "spool"
    config = with_tace_route(listener_config(tmp_path, port, orthanc), models)
    lines = listener_logs()
    with running(config):
        send_and_wait_for_the_job(port, [*pre, tmp_path / "clinical_sr.dcm"], lines, spool, "the TACE job")
        wait_for(
            lambda: (
                {"SR", "SEG", "DOC"} <= {s["MainDicomTags"].get("Modality") for s in _study_series(orthanc, study_uid)}
            ),
            120,
            "SR, SEG and PDF in Orthanc",
            interval=1,
        )
    # The SR was routed with the CT: the job's inputs hold every instance sent, the SR among them.
    ((job, inputs),) = rows(spool, "SELECT id, inputs FROM jobs")
    assert inputs == len(pre) + 1
    assert any(
        pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"
        for p in (spool / "jobs" / str(job) / "input").rglob("*")
        if p.is_file()
    )

    plan = json.loads((spool / "jobs" / str(job) / "output" / "plan.json").read_text())
    clinical = plan["clinical"]
    assert clinical["source"] == "a text SR in the study"
    assert clinical["given"] == GIVEN  # the SR's values, not the case's cohort row
    assert clinical["imputed"] == [] and clinical["imputed_note"] == "no covariate imputed"
    used = clinical["model_covariates"]
    assert used and not any(v["imputed"] for v in used.values())
    assert any(v["reads_as"] == "Child-Pugh C" for v in used.values())
    assert {f["code"] for f in plan["contraindications"]} == {"child_pugh_c", "main_portal_vein"}

    # The plan SR in the PACS says it too (the listener sends only results there, not the study's own SR).
    (sr_series,) = [s for s in _study_series(orthanc, study_uid) if s["MainDicomTags"].get("Modality") == "SR"]
    url = f"http://127.0.0.1:{orthanc.http}/instances/{sr_series['Instances'][0]}/file"
    with urllib.request.urlopen(url, timeout=10) as r:
        sr = pydicom.dcmread(io.BytesIO(r.read()))
    assert sr.Manufacturer == "OncoPlan"
    texts: dict[str, list[str]] = {}
    for item in _items(sr):
        if "ConceptNameCodeSequence" in item and item.get("TextValue"):
            texts.setdefault(str(item.ConceptNameCodeSequence[0].CodeValue), []).append(str(item.TextValue))
    flags = texts.get("TACE-FLAG", [])
    assert len(flags) == 2 and any(f.startswith("CONTRAINDICATION: Child-Pugh C") for f in flags)
    assert texts["TACE-IMPUTED"] == ["no covariate imputed"]

    # No patient identifier or UID in the listener's lines.
    logged = "\n".join(lines)
    for value in (patient_id, str(first.PatientName), study_uid, str(first.SeriesInstanceUID)):
        assert value not in logged


def test_a_route_given_a_fixed_clinical_file_plans_with_it_over_the_studys_sr(
    tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented alternative to the SR: an `app: tace` route with `args: ["--clinical", FILE]` (a file
    the listener can read; DICOM carries no loose file). The study's text SR is staged as well, and the
    route's file wins: plan.json gives the file as the source and its values, with its bilirubin above
    3 mg/dL flagged as a contraindication, and nothing of the SR."""
    from oncoplan.training.synth.cohort import generate_cohort

    from .helpers import cohort_rows, text_sr, tiny_tace_models

    monkeypatch.delenv("ONCOPLAN_CLINICAL", raising=False)
    models = tiny_tace_models(tmp_path / "models")
    cohort = generate_cohort("liver", tmp_path / "c", 1, seed=8810, size="small", progress=False)
    pre = sorted((cohort / cohort_rows(cohort)[0]["TCIA_ID"] / "dicom" / "pre").rglob("*.dcm"))
    text_sr(pydicom.dcmread(pre[0]), CLINICAL_TEXT).save_as(tmp_path / "clinical_sr.dcm")
    fixed = tmp_path / "site" / "clinical.json"
    fixed.parent.mkdir()
    fixed.write_text(json.dumps({"CPS": "B", "AFP": "31 ug/L", "Vascular invasion": 0, "bilirubin": "68 umol/L"}))

    port, spool = free_port(), tmp_path / "spool"
    config = with_tace_route(listener_config(tmp_path, port, orthanc), models, "--clinical", str(fixed))
    lines = listener_logs()
    with running(config):
        send_and_wait_for_the_job(port, [*pre, tmp_path / "clinical_sr.dcm"], lines, spool, "the TACE job")
    ((job, inputs),) = rows(spool, "SELECT id, inputs FROM jobs")
    assert inputs == len(pre) + 1  # the SR was there too
    clinical = json.loads((spool / "jobs" / str(job) / "output" / "plan.json").read_text())["clinical"]
    assert clinical["source"] == "the --clinical file"
    assert clinical["given"] == {
        "child_pugh": "B",
        "afp_ng_ml": 31.0,
        "vascular_invasion": False,
        "bilirubin_mg_dl": pytest.approx(68 / 17.1, abs=1e-3),
    }
    assert clinical["imputed"] == []
    assert [f["code"] for f in clinical["flags"] if f["level"] == "contraindication"] == ["bilirubin"]

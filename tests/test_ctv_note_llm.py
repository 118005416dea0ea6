"""The CTV app's optional LLM note reader (issue 36, point 1): `oncoplan contour --note-reader openai`.

Against a real OpenAI-compatible server on loopback that records every byte it receives (the TACE policy
tests' LoopbackLLM): opt-in, de-identified bytes only, a good answer used, a bad one falling back to the
rules and recorded. The CTV bundle is the shipped one, on eager PyTorch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from oncoplan.ctv.llm_note_reader import NoteReader
from oncoplan.training.synth.cohort import generate_cohort

from .helpers import cohort_rows
from .test_planner_policy import LoopbackLLM, completion, tiny_chat_model  # noqa: F401 (a fixture)
from .test_tace_app import _plant

pytestmark = pytest.mark.integration

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ctv_llmseg"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ONCOPLAN_BACKENDS": "torch"}
# A note the rule reader refuses (no N stage it recognises) and a reader of English settles: left, BCS, N1.
HARD = "Left breast cancer, T2, treated by wide local excision. Axillary clearance: macrometastases in 2 of 14 nodes."
GOOD = {"sides": [{"side": "left", "surgery": "breast-conserving surgery", "n_stage": "N1", "t_stage": "T2"}]}
IDENTIFYING = ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName")


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oncoplan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def _env(llm: LoopbackLLM, **more: str) -> dict:
    endpoint = {"OPENAI_API_KEY": "sk-test", "ONCOPLAN_LLM_BASE_URL": llm.base_url, "ONCOPLAN_LLM_MODEL": "site-llm"}
    return {**ENV, **endpoint, **more}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctvllm")
    cohort = generate_cohort("breast", root / "c", 1, seed=41, size="small", progress=False)
    return cohort / cohort_rows(cohort)[0]["image_dir"]


@pytest.fixture(scope="module")
def planted(study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the study with an identifier in every DICOM text field, and a note that carries the study's
    identifying values (names, IDs, dates in two forms, UIDs) around the clinical content."""
    folder = tmp_path_factory.mktemp("ctvllm_planted") / "study"
    secrets, named = _plant(study, folder)
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    date = str(ds.StudyDate)
    header = ", ".join(str(ds.get(k)) for k in IDENTIFYING)
    note = (
        f"{header}. CT of {date} ({date[6:]}/{date[4:6]}/{date[:4]}), study {ds.StudyInstanceUID}, "
        f"series {ds.SeriesInstanceUID}. {HARD}"
    )
    return {"dir": folder, "secrets": secrets, "named": named, "note": note}


@pytest.fixture(scope="module")
def read_by_llm(planted: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`oncoplan contour --note-reader openai --allow-send` on the planted study; the endpoint answers well."""
    out = tmp_path_factory.mktemp("ctvllm_out") / "out"
    llm = LoopbackLLM()
    llm.script = [json.dumps(GOOD)]
    try:
        args = ["contour", "-i", str(planted["dir"]), "-o", str(out), "-m", str(BUNDLE), "--note", planted["note"]]
        r = _cli(*args, "--note-reader", "openai", "--allow-send", env=_env(llm))
    finally:
        llm.close()
    assert r.returncode == 0, r.stderr[-4000:]
    return {"out": out, "raw": llm.raw, "bodies": llm.bodies, "log": r.stdout + r.stderr}


def test_an_llm_note_reader_is_refused_without_allow_send_before_the_graph(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**ENV, "OPENAI_API_KEY": "sk-test", "ONCOPLAN_LLM_BASE_URL": "http://127.0.0.1:9/v1"}
    env.pop("ONCOPLAN_LLM_ALLOW_SEND", None)
    r = _cli("contour", "-i", str(study), "-o", str(out), "-m", str(BUNDLE), "--note-reader", "openai", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "oncoplan: error: note reader openai sends the de-identified clinical note to an LLM service: opt in with "
        "--allow-send (or ONCOPLAN_LLM_ALLOW_SEND=1)"
    )
    assert "Holoscan" not in r.stderr and not out.exists()
    # The MAP's way says the same: the reader from the environment, no opt-in.
    cmd = [sys.executable, "-m", "oncoplan.apps.ctv_contouring", "-i", str(study), "-o", str(out), "-m", str(BUNDLE)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "ONCOPLAN_NOTE_READER": "openai"}, timeout=120)
    assert r.returncode == 2 and "opt in with --allow-send" in r.stderr.strip().splitlines()[-1]
    assert not any(out.glob("*"))  # the SDK's init_app_context makes the folder; nothing is written into it


def test_the_endpoint_receives_the_note_without_any_identifier_of_the_study(planted: dict, read_by_llm: dict) -> None:
    assert len(read_by_llm["raw"]) == 1  # one request: read before the graph, not again inside it
    raw = read_by_llm["raw"][0]
    assert b"PLANTED" not in raw.upper()
    for value in planted["secrets"]:
        assert value.encode() not in raw, value
    sent = read_by_llm["bodies"][0]["messages"][0]["content"]
    note = sent.split("<<<")[1].split(">>>")[0]
    assert note.strip().endswith(HARD) and note.count("[removed]") >= 5 and "[date]" in note, note
    for keyword in IDENTIFYING:  # nor in any log line
        assert planted["named"][keyword] not in read_by_llm["log"], keyword


def test_a_good_answer_is_used_and_the_outputs_say_who_read_the_note(read_by_llm: dict) -> None:
    out = read_by_llm["out"]
    sidecar = json.loads((out / "ctv_note.json").read_text())
    assert sidecar["reader"] == "openai" and sidecar["reader_model"] == "site-llm"
    assert sidecar["reader_fallback"] is None and sidecar["sent_deidentified_note"] is True
    assert sidecar["interpretation"] == "left, breast-conserving surgery, N1"  # the rules alone refuse this note
    assert sidecar["model_note"] == "N1, breast conserving surgery, left side"
    assert sidecar["sides"][0]["t_stage"] == "T2"
    assert "sk-test" not in json.dumps(sidecar)
    rs = pydicom.dcmread(out / "ctv_rtstruct.dcm")
    assert "interpreted as: left, breast-conserving surgery, N1" in rs.StructureSetDescription
    assert "interpreted as: left, breast-conserving surgery, N1 (read by openai:site-llm)" in read_by_llm["log"]
    assert "note read by openai:site-llm" in read_by_llm["log"]  # the closing summary


def test_a_bad_answer_falls_back_to_the_rules_and_is_recorded(study: Path, tmp_path: Path) -> None:
    """The MAP's way (`python -m`, the reader and the opt-in from the environment); the endpoint answers a
    stage outside the vocabulary: the rules read the note, and ctv_note.json and the log say why."""
    llm = LoopbackLLM()
    llm.script = ['{"sides": [{"side": "left", "surgery": "lumpectomy", "n_stage": "N7"}]}']
    note = "s/p left lumpectomy, pT1c pN1a (2/12 nodes positive)"
    env = _env(llm, ONCOPLAN_NOTE_READER="openai", ONCOPLAN_LLM_ALLOW_SEND="1", ONCOPLAN_NOTE=note)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan.apps.ctv_contouring", "-i", str(study), "-o", str(out), "-m", str(BUNDLE)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        llm.close()
    assert r.returncode == 0, r.stderr[-4000:]
    assert len(llm.raw) == 1
    sidecar = json.loads((out / "ctv_note.json").read_text())
    assert sidecar["reader"] == "rules" and sidecar["reader_requested"] == "openai:site-llm"
    assert "unknown N stage 'N7'" in sidecar["reader_fallback"]
    assert sidecar["interpretation"] == "left, breast-conserving surgery, N1"
    assert "note reader openai:site-llm fell back to the rules" in r.stderr


def test_a_bad_answer_on_a_note_the_rules_refuse_is_one_line_before_the_graph(study: Path, tmp_path: Path) -> None:
    llm = LoopbackLLM()
    llm.script = ['{"refuse": "the N stage is not given"}']
    out = tmp_path / "out"
    try:
        args = ["contour", "-i", str(study), "-o", str(out), "-m", str(BUNDLE), "--note", HARD]
        r = _cli(*args, "--note-reader", "openai", "--allow-send", env=_env(llm))
    finally:
        llm.close()
    assert r.returncode == 2 and not out.exists()
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error: the --note argument: cannot tell what the node count '2 of 14 nodes'")
    assert "(the openai:site-llm note reader fell back to the rules: AnswerRejected: the model declined" in last


def test_a_timeout_or_an_answer_naming_another_side_falls_back_to_the_rules() -> None:
    llm = LoopbackLLM()
    env = {"OPENAI_API_KEY": "sk-test", "ONCOPLAN_LLM_BASE_URL": llm.base_url, "ONCOPLAN_LLM_TIMEOUT": "1"}
    reader = NoteReader.resolve("openai", allow_send=True, env=env)
    llm.script = [
        lambda request: (200, completion(json.dumps(GOOD), request["model"]), 2.5),
        json.dumps({"sides": [{"side": "right", "surgery": "mastectomy", "n_stage": "N2"}]}),
    ]
    try:
        slow, slow_record = reader.read("left breast, BCS, N1", "note")
        other, other_record = reader.read("left breast, BCS, N1", "note")
    finally:
        llm.close()
    assert slow.interpretation == other.interpretation == "left, breast-conserving surgery, N1"
    assert slow_record["reader"] == "rules" and "no answer within 1 s" in slow_record["reader_fallback"]
    assert "the right side, which the note does not name" in other_record["reader_fallback"]


def test_a_local_chat_model_reads_the_note_and_a_garbage_answer_falls_back(
    tiny_chat_model: tuple,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--note-reader transformers --llm-model DIR`: nothing leaves the machine; the random one-layer model's
    garbage falls back to the rules, and a scripted good answer (its generate replaced) is used."""
    import torch

    model, tokenizer = tiny_chat_model
    folder = tmp_path / "tiny-chat"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reader = NoteReader.resolve("transformers", model=str(folder), env={})
    note = "Left breast cancer treated by wide local excision; sentinel node biopsy: pN0 (0/2)."
    reading, record = reader.read(note, "note")
    assert record["reader"] == "rules" and record["reader_requested"] == "transformers:tiny-chat"
    assert record["reader_fallback"] and reading.interpretation == "left, breast-conserving surgery, N0"
    answer = json.dumps({"sides": [{"side": "left", "surgery": "lumpectomy", "n_stage": "pN0", "t_stage": None}]})
    answer_ids = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def scripted(self: object, **kwargs: object) -> torch.Tensor:
        return torch.cat([kwargs["input_ids"], answer_ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)

    monkeypatch.setattr(type(model), "generate", scripted)
    reading, record = reader.read(note, "note")
    assert record["reader"] == "transformers" and record["reader_fallback"] is None
    assert reading.interpretation == "left, breast-conserving surgery, N0" and "sent_deidentified_note" not in record

"""TACE policy: prompts, strict answers, conflict rules, privacy, and the offline/OpenAI/transformers backends.

The OpenAI backend talks to a loopback OpenAI-compatible server (http.server on 127.0.0.1, a
random port) that records the exact bytes of every request it receives.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oncoplan.planner import (
    AnswerRejected,
    LLMConfig,
    Observation,
    OfflinePolicy,
    OpenAIPolicy,
    Prior,
    PrivacyError,
    build_observation,
    check_outgoing,
    make_policy,
    parse_answer,
    refine,
)
from oncoplan.planner.deid import png_bytes
from oncoplan.planner.prompts import render_plan_prompt, render_policy_prompt
from oncoplan.tace.actions import (
    ACTION_BASE,
    DRUGS,
    EMBOLICS,
    TCIA_DRUGS,
    TCIA_EMBOLICS,
    Protocol,
    conflicts,
)
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets, stable_uid
from oncoplan.training.synth.geometry import Grid

TCIA_SET = TCIA_DRUGS + TCIA_EMBOLICS
POLICY_LOG = "oncoplan.planner.policy"

# -- the case: a tiny CT series with every identifier a real header has -------------------------

PATIENT = Patient("PID-4711", "DOE^JANE", "19390101", "F", 70)
STUDY = Study(stable_uid("planner-test", "study"), "20090315", "101500", "ACC987654", "PRE", "CT ABDOMEN")
SERIES = Series(stable_uid("planner-test", "series"), 3, "Recon 2: LIVER 3 PHASE (PVP)", stable_uid("for"), "ABDOMEN")
ROW = {
    "TCIA_ID": "HCC_SI042",
    "age": 70,
    "Sex": 2,
    "CPS": "A",
    "AFP": 812.4,
    "Tr_Size": 4.6,
    "tumor_nodul": "multinodular",
    "Vascular invasion": 0,
    "OS": 104.3,
    "chemotherapy": "Cisplatin; Doxorubicin; Mitomycin; Lipiodol",
}


@pytest.fixture(scope="module")
def series() -> list[Any]:
    grid = Grid.centred((6, 48, 48), (5.0, 0.8, 0.8), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape, -900.0)
    hu[:, 8:40, 8:40] = 60.0  # liver
    hu[4, 20:30, 20:30] = 250.0  # the largest tumor cross-section is on slice 4
    return ct_datasets(hu, grid, PATIENT, STUDY, SERIES)


@pytest.fixture(scope="module")
def observation(series: list[Any]) -> Observation:
    mask = np.zeros((6, 48, 48), dtype=bool)
    mask[4, 20:30, 20:30] = True
    mask[1, 24:26, 24:26] = True
    return build_observation(ROW, series, mask)


def secrets(series: list[Any]) -> list[str]:
    """Every identifying value of the case, as the test looks for it in raw bytes."""
    ds = series[0]
    values = [
        "PID-4711",
        "DOE",
        "JANE",
        "HCC_SI042",
        "ACC987654",
        "19390101",
        "1939-01-01",
        "20090315",
        "2009-03-15",
        "03/15/2009",
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.FrameOfReferenceUID,
        ds.file_meta.MediaStorageSOPInstanceUID,
    ]
    return values + [d.SOPInstanceUID for d in series]


# -- the loopback OpenAI-compatible server --------------------------------------------------------


def completion(content: str | None, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class LoopbackLLM:
    """Answers POST /v1/chat/completions from a script; keeps the raw bytes of every request."""

    def __init__(self) -> None:
        self.script: list[Callable[[dict[str, Any]], tuple[int, dict[str, Any], float]] | str] = []
        self.raw: list[bytes] = []
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                head = f"{self.requestline}\r\n{self.headers}".encode("latin-1")
                outer.raw.append(head + body)
                request = json.loads(body)
                outer.bodies.append(request)
                step = outer.script.pop(0) if outer.script else "{}"
                status, payload, delay = (
                    step(request) if callable(step) else (200, completion(step, request["model"]), 0.0)
                )
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[LoopbackLLM]:
    server = LoopbackLLM()
    yield server
    server.close()


def openai_policy(llm: LoopbackLLM, **kwargs: Any) -> OpenAIPolicy:
    config = LLMConfig(
        base_url=llm.base_url,
        api_key="sk-test",
        timeout_s=kwargs.pop("timeout_s", 10.0),
        reasoning_model=kwargs.pop("reasoning_model", None),
    )
    return OpenAIPolicy(config, allow_send=True, **kwargs)


def assert_valid(protocol: Protocol, action_set: tuple[str, ...] = ACTION_BASE) -> None:
    assert protocol.drugs and protocol.embolics
    assert set(protocol.items) <= set(action_set)
    assert not conflicts(protocol.items)


# -- strict answer parsing ---------------------------------------------------------------------------


def test_parse_answer_accepts_the_seed_forms() -> None:
    fig12 = parse_answer('{"keywords": "Doxorubicin; LC Beads"}', TCIA_SET)
    assert fig12.protocol == Protocol.of(["Doxorubicin", "LC Beads"])
    fig10 = parse_answer(
        '```json\n{"Chemotherapy Drugs": "Raltitrexed; THP", "Embolization Materials": ["Lipiodol", "gelatin sponge"],'
        ' "reason": "hypervascular"}\n```'
    )
    assert fig10.protocol.items == ("Raltitrexed", "Pirarubicin", "Lipiodol", "Gelatin Sponge")
    assert fig10.reason == "hypervascular"
    wrapped = parse_answer('{"001": {"keywords": "Pirarubicin (THP); Lipiodol"}}')  # the seed's "001: {...}"
    assert wrapped.protocol.items == ("Pirarubicin", "Lipiodol")
    thinking = parse_answer(
        '<think>two platinums...</think>\n{"keywords": "Cisplatin; Lipiodol"}', strip_reasoning=True
    )
    assert thinking.protocol.items == ("Cisplatin", "Lipiodol")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty answer"),
        ("   ", "empty answer"),
        (None, "empty answer"),
        ('Here is the plan: {"keywords": "Cisplatin; Lipiodol"}', "not JSON"),
        ('Sure!\n```json\n{"keywords": "Cisplatin; Lipiodol"}\n```', "not JSON"),
        ('{"keywords": "Cisplatin; Lipiodol"', "not JSON"),
        ('["Cisplatin", "Lipiodol"]', "not a JSON object"),
        ('{"keywords": ""}', "no keyword given"),
        ('{"keywords": "Sorafenib; Lipiodol"}', "'Sorafenib' is not in the TACE action base"),
        ('{"keywords": "Cisplatin; Lipiodol", "dose": "50 mg"}', "unknown key"),
        ('{"Chemotherapy Drugs": "Lipiodol", "Embolization Materials": "PVA"}', "not a chemotherapy drug"),
        ('{"Chemotherapy Drugs": "Cisplatin", "Embolization Materials": "Epirubicin"}', "not an embolization"),
        ('{"keywords": "Cisplatin"}', "no embolization material"),
        ('{"keywords": "Lipiodol"}', "no chemotherapy drug"),
        ('{"keywords": 3}', "must be a string"),
        ('{"plan": "Cisplatin; Lipiodol"}', "unknown key(s) 'plan'"),
        ('{"reason": "unsure"}', "no 'keywords'"),
    ],
)
def test_parse_answer_rejects(answer: str | None, why: str) -> None:
    with pytest.raises(AnswerRejected, match=re.escape(why)):
        parse_answer(answer)


def test_parse_answer_respects_the_action_set() -> None:
    with pytest.raises(AnswerRejected, match="not in the requested action set"):
        parse_answer('{"keywords": "Epirubicin; Lipiodol"}', TCIA_SET)


# -- prompts -------------------------------------------------------------------------------------------


def test_prompts_render_the_action_set_and_observation() -> None:
    text = render_policy_prompt("Age: 70 years.", ACTION_BASE, "one axial CT slice")
    assert "please **list potential TACE drug and embolism sets**" in text  # Figure 10
    listed = re.findall(r"^- (.+)$", text, re.MULTILINE)
    assert listed == [("Pirarubicin (THP)" if n == "Pirarubicin" else n) for n in ACTION_BASE]  # each once
    assert '"observation": "Age: 70 years."' in text and "patient_id" not in text
    fig11 = render_plan_prompt("x", ACTION_BASE)
    assert (
        "design a TACE treatment plan" in fig11
        and '"keywords": "Raltitrexed; Lobaplatin; Lipiodol; Gelatin Sponge"' in fig11
    )
    fig12 = render_plan_prompt("x", TCIA_SET)
    assert '"keywords": "Doxorubicin; LC Beads"' in fig12 and "Epirubicin" not in fig12
    # every example answer in a prompt passes the parser over that prompt's action set
    for prompt, action_set in ((text, ACTION_BASE), (fig11, ACTION_BASE), (fig12, TCIA_SET)):
        example = re.search(r"\*\*Output\*\*\n(\{.*\})", prompt).group(1)
        parse_answer(example, action_set)


# -- deterministic rules -------------------------------------------------------------------------------


def test_rules_remove_conflicts_and_report_each_item() -> None:
    proto = Protocol.parse("Cisplatin; Nedaplatin; Epirubicin; THP; Mitomycin; Lipiodol; PVA; Gelatin Sponge")
    report = refine(proto, Prior.from_practice())
    assert not conflicts(report.refined.items)
    # Nedaplatin is platinum and THP an anthracycline (the released MeWM rules missed both)
    removed = {r.item: r for r in report.removed}
    assert set(removed) == {"Nedaplatin", "Pirarubicin", "PVA"}
    assert "platinum" in removed["Nedaplatin"].rule and removed["Nedaplatin"].kept == ("Cisplatin",)
    assert "anthracycline" in removed["Pirarubicin"].rule and removed["Pirarubicin"].kept == ("Epirubicin",)
    assert removed["PVA"].rule == "PVA excludes Gelatin Sponge" and removed["PVA"].kept == ("Gelatin Sponge",)
    assert report.refined.items == ("Epirubicin", "Mitomycin", "Cisplatin", "Lipiodol", "Gelatin Sponge")
    assert refine(report.refined).removed == ()


def test_rules_keep_the_more_used_item_then_action_base_order() -> None:
    # With a prior where Nedaplatin is used more than Cisplatin, Nedaplatin stays.
    prior = Prior.from_protocols(["Nedaplatin; Lipiodol"] * 3 + ["Cisplatin; Lipiodol"])
    assert refine(Protocol.parse("Cisplatin; Nedaplatin; Lipiodol"), prior).refined.drugs == ("Nedaplatin",)
    # Unused items tie: the first in ACTION_BASE stays (Oxaliplatin before Lobaplatin).
    prior = Prior.from_protocols(["Raltitrexed; Lipiodol"])
    assert refine(Protocol.parse("Lobaplatin; Oxaliplatin; Lipiodol"), prior).refined.drugs == ("Oxaliplatin",)
    # PVA stays only if used more than both its partners together.
    prior = Prior.from_protocols(["Idarubicin; PVA"] * 5 + ["Idarubicin; Absolute Alcohol"])
    report = refine(Protocol.parse("Idarubicin; PVA; Absolute Alcohol; Gelatin Sponge"), prior)
    assert report.refined.embolics == ("PVA",)
    assert {r.item for r in report.removed} == {"Absolute Alcohol", "Gelatin Sponge"}


# -- offline policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("action_set", [ACTION_BASE, TCIA_SET])
def test_offline_policy_is_valid_ordered_and_deterministic(action_set: tuple[str, ...]) -> None:
    a = OfflinePolicy(action_set).propose(None, 40)
    b = OfflinePolicy(action_set).propose(None, 40)
    assert [c.protocol for c in a] == [c.protocol for c in b]
    assert len({c.protocol for c in a}) == len(a) == (40 if action_set == ACTION_BASE else len(a))
    for c in a:
        assert_valid(c.protocol, action_set)
        assert len(c.protocol.drugs) <= 3 and len(c.protocol.embolics) <= 2 and c.source == "offline"
    priors = [c.prior for c in a]
    assert priors == sorted(priors, reverse=True) and 0 < sum(priors) <= 1
    assert OfflinePolicy(action_set).propose(None, 1)[0].protocol == a[0].protocol


def test_offline_policy_prior_from_practice_and_cohort(tmp_path: Path) -> None:
    internal = OfflinePolicy(TCIA_SET, Prior.from_practice("internal")).propose(None, 3)
    assert [str(c.protocol) for c in internal] == [
        "Mitomycin; Cisplatin; Doxorubicin; Lipiodol",
        "Doxorubicin; Lipiodol; LC Beads",
        "Mitomycin; Cisplatin; Lipiodol",
    ]
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(
        "TCIA_ID,gold_protocol\nA,Pirarubicin; Lipiodol\nB,Pirarubicin; Lipiodol\nC,Cisplatin; Lipiodol\nD,\n"
    )
    top = OfflinePolicy(prior=Prior.from_cohort(cohort)).propose(None, 2)
    assert [str(c.protocol) for c in top] == ["Pirarubicin; Lipiodol", "Cisplatin; Lipiodol"]
    with pytest.raises(ValueError, match="no column"):
        Prior.from_cohort(cohort, "oracle_protocol")


# -- privacy ---------------------------------------------------------------------------------------------


def test_observation_is_deidentified(observation: Observation, series: list[Any]) -> None:
    assert "Age: 70 years." in observation.text and "Child-Pugh class: A." in observation.text
    assert "AFP: 812.4 ng/mL." in observation.text and "Largest tumor diameter: 4.6 cm." in observation.text
    assert "104.3" not in observation.text and "Cisplatin" not in observation.text  # not allow-listed
    for value in secrets(series):
        assert value.lower() not in observation.text.lower() and value.lower() not in observation.image_note.lower()
    assert set(secrets(series)) - {"1939-01-01", "2009-03-15", "03/15/2009"} <= observation.forbidden
    (png,) = observation.images
    assert png.startswith(b"\x89PNG") and b"tEXt" not in png and b"PID" not in png
    assert "largest tumor" in observation.image_note
    check_outgoing(json.dumps({"text": observation.text}), observation.forbidden)
    old = build_observation({**ROW, "age": 93})
    assert "90 years or older" in old.text and old.images == ()


def test_burned_in_annotation_gives_no_image(series: list[Any]) -> None:
    import copy

    burned = [copy.deepcopy(ds) for ds in series]
    burned[0].BurnedInAnnotation = "YES"
    obs = build_observation(ROW, burned)
    assert obs.images == () and "burned-in" in obs.image_note


@pytest.mark.parametrize(
    "text",
    [
        "study 1.2.840.113619.2.55.3.604688119",
        "uid 2.25.168813414316358266401225803640046204575",
        "scanned 20090315",
        "scanned 2009-03-15",
        "scanned 15/03/2009",
        "scanned March 15, 2009",
        "scanned 15 Mar 2009",
        "patient pid-4711 seen",
        "patient Doe",
        "patient \\u0050ID-4711",  # JSON escapes hide nothing
    ],
)
def test_guard_refuses_identifying_bodies(text: str) -> None:
    body = '{"messages": [{"role": "user", "content": "' + text + '"}]}'
    with pytest.raises(PrivacyError):
        check_outgoing(body.encode(), ["PID-4711", "DOE^JANE", "DOE", "JANE"])


def test_guard_allows_plain_clinical_text_and_checks_images() -> None:
    ok = {
        "model": "gpt-4o-2024-08-06",
        "messages": [{"role": "user", "content": "Age: 70 years. AFP: 1628.7 ng/mL. Largest tumor diameter: 0.8 cm."}],
    }
    check_outgoing(json.dumps(ok), ["PID-4711"], exempt=["gpt-4o-2024-08-06"])
    with pytest.raises(PrivacyError, match="date"):
        check_outgoing(json.dumps(ok), ["PID-4711"])  # the dated model name is a date unless exempt
    png = png_bytes(np.zeros((4, 4), dtype=np.uint8))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    check_outgoing(json.dumps({"image_url": {"url": url}}), ["PID-4711"])
    text_chunk = b"PatientID\x00PID-4711"
    chunk = struct.pack(">I", len(text_chunk)) + b"tEXt" + text_chunk + b"\0\0\0\0"
    tagged = png[:-12] + chunk + png[-12:]
    url = "data:image/png;base64," + base64.b64encode(tagged).decode()
    with pytest.raises(PrivacyError, match="tEXt"):
        check_outgoing(json.dumps({"image_url": {"url": url}}), [])
    with pytest.raises(PrivacyError, match="only PNG"):
        check_outgoing(json.dumps({"url": "data:image/jpeg;base64,AAAA"}), [])


# -- OpenAI-compatible backend ------------------------------------------------------------------------


def test_sending_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(PermissionError, match="opt-in"):
        OpenAIPolicy()
    with pytest.raises(PermissionError, match="opt-in"):
        make_policy("openai")
    assert isinstance(make_policy(), OfflinePolicy)
    env = {"ONCOPLAN_LLM_BASE_URL": "http://127.0.0.1:9/v1", "ONCOPLAN_LLM_MODEL": "qwen2.5-vl", "OPENAI_API_KEY": "k"}
    config = LLMConfig.from_env(env)
    assert (config.base_url, config.model, config.api_key) == ("http://127.0.0.1:9/v1", "qwen2.5-vl", "k")
    assert LLMConfig.from_env({}).model == "gpt-4o" and "k" not in repr(config)
    with pytest.raises(ValueError, match="API key"):
        OpenAIPolicy(LLMConfig.from_env({}), allow_send=True)


def test_valid_answer(llm: LoopbackLLM, observation: Observation) -> None:
    llm.script = ['{"Chemotherapy Drugs": "Cisplatin; Doxorubicin", "Embolization Materials": "Lipiodol; LC Beads"}']
    policy = openai_policy(llm)
    cands = policy.propose(observation, k=3)
    assert policy.last_fallback_reason is None and len(llm.bodies) == 1
    assert [c.source for c in cands] == ["openai:gpt-4o"] * 3
    for c in cands:
        assert set(c.protocol.items) <= {"Cisplatin", "Doxorubicin", "Lipiodol", "LC Beads"}
        assert_valid(c.protocol)
        assert not c.refinement.removed
    request = llm.bodies[0]
    assert request["model"] == "gpt-4o" and request["temperature"] == 0.2
    text, image = request["messages"][0]["content"]
    assert "list potential TACE drug and embolism sets" in text["text"] and "Age: 70 years." in text["text"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_exact_request_bytes_carry_no_identifier(llm: LoopbackLLM, observation: Observation, series: list[Any]) -> None:
    llm.script = ["not json", '{"keywords": "Cisplatin; Doxorubicin; Lipiodol"}', '{"keywords": "Cisplatin; Lipiodol"}']
    policy = openai_policy(llm, mode="plan", reasoning_model="deepseek-r1")
    policy.propose(observation, k=2)
    assert len(llm.raw) == 3  # malformed answer, its retry, and the reasoning-model call
    everything = b"\n".join(llm.raw)
    low = everything.lower()
    for value in secrets(series):
        assert value.lower().encode() not in low, value
    # no UID-like or date-like value anywhere outside the base64 image
    text = re.sub(rb"data:image/png;base64,[A-Za-z0-9+/=]+", b"", everything).decode("latin-1")
    assert not re.search(r"(?<![\d.])[0-2]\.\d+\.\d+\.\d+", text)
    assert not re.search(r"(?<!\d)(19|20)\d\d-?(0\d|1[0-2])-?[0-3]\d(?!\d)", text)
    # the image is pixels only: IHDR, IDAT, IEND
    url = llm.bodies[0]["messages"][0]["content"][1]["image_url"]["url"]
    png = base64.b64decode(url.split(",", 1)[1])
    chunks, pos = [], 8
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        chunks.append(png[pos + 4 : pos + 8])
        pos += 12 + n
    assert chunks == [b"IHDR", b"IDAT", b"IEND"]


def test_guard_refuses_before_anything_is_sent(
    llm: LoopbackLLM, observation: Observation, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = Observation(observation.text + " Patient PID-4711.", observation.images, "", observation.forbidden)
    policy = openai_policy(llm)
    with caplog.at_level(logging.ERROR, logger=POLICY_LOG):
        cands = policy.propose(leaky, k=2)
    assert llm.raw == []
    assert "privacy guard" in policy.last_fallback_reason and "privacy guard" in caplog.text
    assert [c.source for c in cands] == ["offline", "offline"]


def test_guard_on_the_exact_bytes_refuses_in_the_http_client(
    llm: LoopbackLLM, observation: Observation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second guard (an HTTP request hook on the bytes the client built) holds on its own."""
    from oncoplan.planner import policy as policy_module

    calls: list[int] = []
    real = policy_module.check_outgoing

    def first_check_blind(body: Any, forbidden: Any = (), exempt: Any = ()) -> None:
        calls.append(1)
        if len(calls) > 1:
            real(body, forbidden, exempt)

    monkeypatch.setattr(policy_module, "check_outgoing", first_check_blind)
    leaky = Observation(observation.text + " Seen 2009-03-15.", (), "", observation.forbidden)
    policy = openai_policy(llm)
    cands = policy.propose(leaky, k=1)
    assert len(calls) == 2 and llm.raw == []
    assert "privacy guard: a date" in policy.last_fallback_reason and cands[0].source == "offline"


def test_malformed_json_is_retried_then_falls_back(
    llm: LoopbackLLM, observation: Observation, caplog: pytest.LogCaptureFixture
) -> None:
    llm.script = ['{"keywords": "Cisplatin; Lipiodol"', "I suggest cisplatin with lipiodol.", "```json\n{]\n```"]
    policy = openai_policy(llm, max_retries=2)
    with caplog.at_level(logging.WARNING, logger=POLICY_LOG):
        cands = policy.propose(observation, k=4)
    assert len(llm.bodies) == 3
    # each retry carries the rejected answer and the reason
    retry = llm.bodies[1]["messages"]
    assert retry[1] == {"role": "assistant", "content": '{"keywords": "Cisplatin; Lipiodol"'}
    assert "rejected: not JSON" in retry[2]["content"]
    assert "no valid answer in 3 attempt(s)" in policy.last_fallback_reason
    assert "falling back to the offline policy" in caplog.text and caplog.text.count("rejected: not JSON") == 3
    offline = OfflinePolicy().propose(observation, 4)
    assert [c.protocol for c in cands] == [c.protocol for c in offline]
    assert all(c.reason.startswith("fallback (") for c in cands)


def test_malformed_then_valid_answer_is_used(llm: LoopbackLLM, observation: Observation) -> None:
    llm.script = ["{oops", '{"keywords": "Doxorubicin; LC Beads"}']
    policy = openai_policy(llm, mode="plan", action_set=TCIA_SET)
    cands = policy.propose(observation, k=2)
    assert policy.last_fallback_reason is None
    assert str(cands[0].protocol) == "Doxorubicin; LC Beads" and cands[0].source == "openai:gpt-4o"
    assert "padding" in cands[1].reason and cands[1].source == "offline"
    assert "- LC Beads" in llm.bodies[0]["messages"][0]["content"][0]["text"]
    llm.script = ['{"keywords": "Doxorubicin; LC Beads"}']
    openai_policy(llm, mode="plan", action_set=TCIA_SET, send_images=False).propose(observation, k=1)
    assert isinstance(llm.bodies[-1]["messages"][0]["content"], str)  # text-only endpoint: no image part
    assert "text observation only" in llm.bodies[-1]["messages"][0]["content"]


def test_out_of_base_keywords_are_rejected(
    llm: LoopbackLLM, observation: Observation, caplog: pytest.LogCaptureFixture
) -> None:
    llm.script = ['{"keywords": "Sorafenib; Lipiodol"}', '{"keywords": "Epirubicin; Lipiodol"}']
    policy = openai_policy(llm, max_retries=1, action_set=TCIA_SET)
    with caplog.at_level(logging.WARNING, logger=POLICY_LOG):
        cands = policy.propose(observation, k=3)
    assert len(llm.bodies) == 2
    assert "'Sorafenib' is not in the TACE action base" in caplog.text
    assert "'Epirubicin' is not in the requested action set" in policy.last_fallback_reason
    for c in cands:
        assert_valid(c.protocol, TCIA_SET)
        assert c.source == "offline"


def test_conflicting_protocol_is_refined_and_reported(llm: LoopbackLLM, observation: Observation) -> None:
    llm.script = ['{"keywords": "Cisplatin; Oxaliplatin; Epirubicin; THP; Lipiodol; PVA; Gelatin Sponge"}']
    policy = openai_policy(llm, mode="plan")
    (first, *_rest) = policy.propose(observation, k=3)
    assert_valid(first.protocol)
    assert str(first.protocol) == "Epirubicin; Cisplatin; Lipiodol; Gelatin Sponge"
    report = first.refinement
    assert {(r.item, r.by) for r in report.removed} == {
        ("Oxaliplatin", "rules"),
        ("Pirarubicin", "rules"),
        ("PVA", "rules"),
    }
    rules = {r.item: r.rule for r in report.removed}
    assert "platinum" in rules["Oxaliplatin"] and "anthracycline" in rules["Pirarubicin"]
    assert rules["PVA"] == "PVA excludes Gelatin Sponge"
    assert "rules removed Oxaliplatin, Pirarubicin, PVA" in first.reason
    assert json.loads(json.dumps(first.to_dict()))["refinement"]["removed"][0]["rule"]


def test_reasoning_model_refines_then_rules_still_apply(llm: LoopbackLLM, observation: Observation) -> None:
    proposal = '{"Chemotherapy Drugs": "Cisplatin; Nedaplatin; Mitomycin", "Embolization Materials": "Lipiodol; PVA"}'
    reasoning = (
        "<think>Cisplatin and nedaplatin are both platinum... PVA is fine with lipiodol.</think>\n"
        '{"Chemotherapy Drugs": "Cisplatin; Nedaplatin", "Embolization Materials": "Lipiodol; PVA; NBCA",'
        ' "reason": "mitomycin adds marrow toxicity"}'
    )
    llm.script = [proposal, reasoning]
    policy = openai_policy(llm, reasoning_model="deepseek-r1")
    cands = policy.propose(observation, k=5)
    second = llm.bodies[1]
    assert second["model"] == "deepseek-r1" and "temperature" not in second
    assert "multiple platinum-based drugs cannot be used simultaneously" in second["messages"][0]["content"]
    report = cands[0].refinement
    by = {r.item: r for r in report.removed}
    assert by["Mitomycin"].by == "reasoning-model:deepseek-r1" and "marrow toxicity" in by["Mitomycin"].rule
    assert by["Nedaplatin"].by == "rules" and "platinum" in by["Nedaplatin"].rule
    assert any("NBCA" in n and "ignored" in n for n in report.notes)  # it may only remove
    assert str(report.refined) == "Cisplatin; Lipiodol; PVA"
    for c in cands:
        assert set(c.protocol.items) <= {"Cisplatin", "Lipiodol", "PVA"} or c.source == "offline"
        assert_valid(c.protocol)


def test_slow_answer_times_out_and_falls_back(
    llm: LoopbackLLM, observation: Observation, caplog: pytest.LogCaptureFixture
) -> None:
    llm.script = [lambda req: (200, completion('{"keywords": "Cisplatin; Lipiodol"}'), 3.0)]
    policy = openai_policy(llm, timeout_s=0.5)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=POLICY_LOG):
        cands = policy.propose(observation, k=2)
    assert time.monotonic() - start < 2.5
    assert "no answer within 0.5 s" in policy.last_fallback_reason
    assert "falling back to the offline policy" in caplog.text and "0.5 s" in caplog.text
    assert len(llm.bodies) == 1 and [c.source for c in cands] == ["offline", "offline"]


def test_http_error_falls_back(llm: LoopbackLLM, observation: Observation) -> None:
    llm.script = [lambda req: (500, {"error": {"message": "overloaded"}}, 0.0)]
    cands = openai_policy(llm).propose(observation, k=1)
    assert cands[0].source == "offline"


def test_unreachable_endpoint_falls_back(observation: Observation) -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="k", timeout_s=2.0)
    policy = OpenAIPolicy(config, allow_send=True)
    cands = policy.propose(observation, k=1)
    assert cands[0].source == "offline" and "connection error" in policy.last_fallback_reason


# -- local transformers backend ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_model() -> tuple[Any, Any]:
    """A randomly initialised one-layer Llama and a byte-level BPE tokenizer built offline."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([render_policy_prompt("Age: 70 years.", ACTION_BASE)] * 2, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def test_transformers_policy_garbage_falls_back(tiny_chat_model: tuple[Any, Any], observation: Observation) -> None:
    from oncoplan.planner import TransformersPolicy

    model, tokenizer = tiny_chat_model
    seen: list[str] = []
    generate = model.generate

    def spy(**kwargs: Any) -> Any:
        seen.append(tokenizer.decode(kwargs["input_ids"][0]))
        return generate(**kwargs)

    model.generate = spy
    try:
        policy = TransformersPolicy(model, tokenizer, max_new_tokens=12, max_retries=1)
        cands = policy.propose(observation, k=2)
    finally:
        del model.generate
    assert len(seen) == 2  # the first answer and one retry
    assert "list potential TACE drug and embolism sets" in seen[0] and "Age: 70 years." in seen[0]
    assert "data:image" not in seen[0] and "text observation only" in seen[0]
    assert "Your answer was rejected" in seen[1]
    assert policy.last_fallback_reason and [c.source for c in cands] == ["offline", "offline"]


def test_transformers_policy_parses_like_the_others(tiny_chat_model: tuple[Any, Any], observation: Observation) -> None:
    import torch

    from oncoplan.planner import TransformersPolicy

    model, tokenizer = tiny_chat_model
    answer = '```json\n{"keywords": "Cisplatin; Oxaliplatin; Lipiodol"}\n```'
    answer_ids = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def scripted(**kwargs: Any) -> Any:
        return torch.cat([kwargs["input_ids"], answer_ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)

    model.generate = scripted
    try:
        policy = TransformersPolicy(model, tokenizer, mode="plan")
        cands = policy.propose(observation, k=2)
    finally:
        del model.generate
    assert policy.last_fallback_reason is None
    assert cands[0].source.startswith("transformers:") and str(cands[0].protocol) == "Cisplatin; Lipiodol"
    assert [r.item for r in cands[0].refinement.removed] == ["Oxaliplatin"]
    with pytest.raises(ValueError, match="tokenizer"):
        TransformersPolicy(model)


def test_every_backend_returns_protocols_over_the_base(llm: LoopbackLLM, observation: Observation) -> None:
    llm.script = ['{"Chemotherapy Drugs": "Idarubicin", "Embolization Materials": "KMG; NBCA"}']
    for c in openai_policy(llm).propose(observation, k=6):
        assert_valid(c.protocol)
        assert set(c.protocol.drugs) <= set(DRUGS) and set(c.protocol.embolics) <= set(EMBOLICS)

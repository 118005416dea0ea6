"""The free-text note reader: hand-written notes (tests/data/ctv_free_text_notes.json, written by hand,
not by the synthetic generator; tests/data/ctv_free_text_notes_unseen.json, by a writer who had seen neither),
the Table 5 form read as itself, refusals as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oncoplan.ctv.note_reader import interpretation, read_note
from oncoplan.ctv.notes import calibration_notes, format_note, parse_note
from oncoplan.errors import InputError

DATA = Path(__file__).parent / "data"
NOTES = [
    note
    for name in ("ctv_free_text_notes.json", "ctv_free_text_notes_unseen.json")
    for note in json.loads((DATA / name).read_text())["notes"]
]


def test_fixture_is_big_and_hostile() -> None:
    assert len(NOTES) >= 40
    assert sum("refuse" in n for n in NOTES) >= 15


@pytest.mark.parametrize("case", NOTES, ids=[f"{i:02d}" for i in range(len(NOTES))])
def test_hand_written_notes(case: dict) -> None:
    if "refuse" in case:
        with pytest.raises(InputError) as err:
            read_note(case["text"], where="--note")
        msg = str(err.value)
        assert case["refuse"].lower() in msg.lower(), msg
        assert "\n" not in msg and msg.startswith("--note")
    else:
        reading = read_note(case["text"])
        assert [[s.side, s.surgery, s.n_stage] for s in reading.sides] == case["expect"]
        heard = [(s.side, s.surgery, s.n_stage) for s in parse_note(reading.note)]
        assert heard == [tuple(e) for e in case["expect"]]  # the model hears a Table 5 note


def test_template_notes_read_as_themselves() -> None:
    for note in calibration_notes():
        reading = read_note(note)
        assert reading.template and reading.note == note
    bilateral = "N1mi, breast conserving surgery, left side; N2, total mastectomy surgery, right side"
    assert read_note(bilateral).note == bilateral


def test_interpretation_text() -> None:
    sides = parse_note("N1, breast conserving surgery, left side")
    assert interpretation(sides) == "left, breast-conserving surgery, N1"
    both = parse_note(format_note([*sides, *parse_note("N0, total mastectomy surgery, right side")]))
    assert interpretation(both) == "left: breast-conserving surgery, N1; right: mastectomy, N0"
    d = read_note("left breast, BCS, N1").to_dict()
    assert d["interpretation"] == "left, breast-conserving surgery, N1"
    assert d["model_note"] == "N1, breast conserving surgery, left side" and d["template_note"] is False


@pytest.mark.parametrize(
    ("text", "side"),
    [
        ("left breast, BCS, N1", "left"),
        ("L breast, BCS, N1", "left"),
        ("Lt breast BCS N1", "left"),
        ("left-sided breast cancer, BCS, N1", "left"),
        ("BCS (L), N1", "left"),
        ("right breast, BCS, N1", "right"),
        ("R breast, BCS, N1", "right"),
        ("Rt. breast BCS N1", "right"),
        ("R-sided lumpectomy, N1", "right"),
    ],
)
def test_laterality_forms(text: str, side: str) -> None:
    assert [s.side for s in read_note(text).sides] == [side]


@pytest.mark.parametrize(
    ("text", "stage"),
    [
        ("left BCS pN1a", "N1"),
        ("left BCS ypN0", "N0"),
        ("left BCS N1mi", "N1mi"),
        ("left BCS pN1(mi)", "N1mi"),
        ("left BCS cN2", "N2"),
        ("left BCS pN3b", "N3"),
        ("left BCS pN0(i+)", "N0"),
        ("left BCS, pT2N1aM0", "N1"),
        ("left BCS, 0/2 sentinel nodes positive", "N0"),
        ("left BCS, 4/15 nodes positive", "N2"),
        ("left BCS, 11/20 lymph nodes involved", "N3"),
        ("left BCS, node-negative", "N0"),
        ("left BCS, not node positive", "N0"),
        ("left BCS, micrometastasis in one sentinel node", "N1mi"),
    ],
)
def test_n_stage_forms(text: str, stage: str) -> None:
    assert read_note(text).sides[0].n_stage == stage


@pytest.mark.parametrize(
    ("text", "stage"),
    [
        ("Left mastectomy, no micrometastases, pN2a", "N2"),
        ("Left lumpectomy: no evidence of micrometastases; pN0", "N0"),
        ("Left lumpectomy, no nodal micrometastases, pN0", "N0"),
        ("Left lumpectomy. Micrometastases: none. pN0", "N0"),
        ("Left lumpectomy. Micrometastases: 0/2. pN0", "N0"),
        ("Left mastectomy. Number examined: 17; Number with micrometastases: 0. pT2 pN2a", "N2"),
        ("Left lumpectomy, no macrometastases but micrometastases in 1/2 SLN", "N1mi"),
        ("Left lumpectomy. Number with micrometastases: 1. Number examined: 2. pN1mi", "N1mi"),
        ("Left lumpectomy, micrometastasis: 0.8 mm in 1/2 SLN", "N1mi"),
    ],
)
def test_a_micrometastasis_said_absent_is_none_and_one_present_still_counts(text: str, stage: str) -> None:
    """The synoptic "Number with micrometastases: 0" and "no micrometastases" name none (a third writer's note was
    refused for it); a "no" before another finding ("no macrometastases but micrometastases") or a size
    ("0.8 mm") does not make a present one absent."""
    assert read_note(text).sides[0].n_stage == stage


def test_a_micrometastasis_beside_pn0_is_still_refused_not_guessed() -> None:
    with pytest.raises(InputError, match="micrometastasis is mentioned"):
        read_note("Left lumpectomy with micrometastases, pN0", where="--note")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Left lumpectomy, 1/2 SLN micromet nil ECE", [("left", "BCS", "N1mi")]),
        ("Left WLE, micrometastasis not identified on H&E but present on IHC in 1/2 SLN", [("left", "BCS", "N1mi")]),
        ("Left lumpectomy, micrometastasis nil ECE, pN0", "micrometastasis is mentioned"),
        ("Left lumpectomy, twenty-six of 30 nodes positive", "no N stage"),
        ("Left lumpectomy, not one of twelve nodes involved", "no N stage"),
        ("Left lumpectomy, if two of three nodes were involved ALND would follow", "no N stage"),
        ("Left mastectomy, two of four sentinel nodes and three of eight axillary nodes positive", "cannot tell what"),
        ("Left WLE, one of two nodes positive; ALND: five of ten further nodes positive", [("left", "BCS", "N2")]),
        ("Right mastectomy and axillary clearance. Eleven of nineteen nodes involved.", [("right", "TM", "N3")]),
        ("Left lumpectomy, pn2 pump for pain", "no N stage"),
        ("lt bcs pn0(i+)", [("left", "BCS", "N0")]),
        ("Lumpectomy, pN0. Bloods normal (FBC, U&E, LFT)", "names no side"),
        ("Lumpectomy, pN0. lft side of the bed", "names no side"),
        ("Right lumpectomy, pN0. Bloods (FBC, LFT)", [("right", "BCS", "N0")]),
        ("Lft mastecotmy, 6/11 axillary LN positive. Plan PMRT.", [("left", "TM", "N2")]),
    ],
)
def test_what_the_third_writers_notes_taught_the_reader_misreads_nothing(text: str, want: list | str) -> None:
    """Spelled-out counts, lower-case stages, 'Lft' and absent micrometastases are read (a third writer's notes were
    refused for them); a hostile review's notes against those rules are read right or refused, never misread:
    'nil ECE' after a micrometastasis, 'twenty-six', 'not one of', 'if', two counts where one is unread,
    'pn2 pump', 'LFT' (liver function tests)."""
    if isinstance(want, str):
        with pytest.raises(InputError, match=want):
            read_note(text, where="--note")
    else:
        assert [(s.side, s.surgery, s.n_stage) for s in read_note(text).sides] == want

"""Clinical notes: Table 5 format, tabular fields, counterfactual edits, bad notes."""

from __future__ import annotations

import pytest

from oncoplan.ctv.notes import format_note, note_from_row, parse_note, swap_laterality, with_n_stage
from oncoplan.errors import InputError
from oncoplan.training.synth.breast import SITES, clinical_note, sample_record


def test_synthetic_notes_round_trip() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(200):
        record = sample_record(f"C{i}", SITES["internal"], rng)
        note = clinical_note(record)
        assert format_note(parse_note(note)) == note


def test_bilateral_note_keeps_both_clauses() -> None:
    note = "N1mi, breast conserving surgery, left side; N2, total mastectomy surgery, right side"
    sides = parse_note(note)
    assert [(s.side, s.surgery, s.n_stage) for s in sides] == [("left", "BCS", "N1mi"), ("right", "TM", "N2")]
    assert (
        swap_laterality(note) == "N2, total mastectomy surgery, left side; N1mi, breast conserving surgery, right side"
    )


def test_counterfactual_edits() -> None:
    assert swap_laterality("N0, breast conserving surgery, left side") == "N0, breast conserving surgery, right side"
    assert with_n_stage("N0, total mastectomy surgery, right side", "N1") == "N1, total mastectomy surgery, right side"


@pytest.mark.parametrize(
    ("row", "note"),
    [
        (
            {"laterality": "L", "surgery": "Lumpectomy", "N stage": "pN1a", "T stage": "T2"},
            "N1, breast conserving surgery, left side",
        ),
        (
            {"laterality": "bilateral", "surgery": "MRM", "n_stage": "N0"},
            "N0, total mastectomy surgery, left side; N0, total mastectomy surgery, right side",
        ),
        (
            {"left_surgery": "", "right_surgery": "BCS", "right_n_stage": "N1mi", "right_t_stage": "T1"},
            "N1mi, breast conserving surgery, right side",
        ),
        ({"note": "N3, total mastectomy surgery, right side"}, "N3, total mastectomy surgery, right side"),
    ],
)
def test_note_from_tabular_fields(row: dict, note: str) -> None:
    assert note_from_row(row) == note


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "left side",
        "N7, breast conserving surgery, left side",
        "N1, liposuction, left side",
        "N1, breast conserving surgery, left side; N0, breast conserving surgery, left side",
    ],
)
def test_bad_notes_are_one_line_errors(bad: str) -> None:
    with pytest.raises(InputError) as err:
        parse_note(bad, where="clinical.json")
    assert "clinical.json" in str(err.value) and "\n" not in str(err.value)

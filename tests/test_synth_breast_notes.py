"""The free-text note generator: its notes read back to their ground-truth fields; its ambiguous notes
are all refused (the reader's own hand-written test set is tests/data/ctv_free_text_notes.json)."""

from __future__ import annotations

import numpy as np
import pytest

from oncoplan.ctv.note_reader import read_note
from oncoplan.errors import InputError
from oncoplan.training.ctv.free_text import field_accuracy
from oncoplan.training.synth.breast import SITES, sample_record
from oncoplan.training.synth.breast_notes import AMBIGUITIES, ambiguous_note, free_text_note


def test_generated_notes_are_free_text_and_read_back() -> None:
    rng = np.random.default_rng(3)
    templates = 0
    for i in range(300):
        record = sample_record(f"T{i}", SITES["internal" if i % 2 else "external"], rng)
        reading = read_note(free_text_note(record.sides, rng))
        templates += reading.template
        assert [(s.side, s.surgery, s.n_stage) for s in reading.sides] == [
            (s.side, s.surgery, s.n_stage) for s in record.sides
        ]
    assert templates == 0


@pytest.mark.parametrize("kind", AMBIGUITIES)
def test_ambiguous_notes_are_refused(kind: str) -> None:
    rng = np.random.default_rng(5)
    for i in range(50):
        text, _ = ambiguous_note(sample_record(f"A{i}", SITES["internal"], rng).sides, rng, kind)
        with pytest.raises(InputError):
            read_note(text)


def test_field_accuracy_summary() -> None:
    result = field_accuracy(n=200, seed=1, n_ambiguous=20)
    assert result["field_accuracy"] >= 0.99
    assert all(v["refused"] == v["notes"] for v in result["ambiguous"].values())

"""The free-text note generator: its notes read back to their ground-truth fields; its ambiguous notes
are all refused (the reader's own hand-written test set is tests/data/ctv_free_text_notes.json)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.slow
def test_free_text_evaluation_scores_dice_and_both_counterfactuals(breast_cohort: Path) -> None:
    """The CTV part of the free-text evaluation on the shipped bundle: Dice with each note, the nodal flip
    written in free text for every case (add or remove), the laterality flip for unilateral ones."""
    from oncoplan.runtime.bundles import CTV_BUNDLE, shipped_bundles
    from oncoplan.training.ctv.free_text import ctv_free_vs_template

    result = ctv_free_vs_template(shipped_bundles() / CTV_BUNDLE, breast_cohort, limit=2)
    assert result["cases"] == 2 and 0 <= result["dice_free_text"] <= 1
    nodal = result["nodal_flip_free_text"]
    assert sum(v["cases"] for v in nodal.values()) == 2
    assert all("nodal_change" in r and "free_text_nodal_flip" in r for r in result["rows"])


@pytest.mark.slow
def test_shipped_text_path_reads_raw_free_text_as_the_table5_note_of_its_fields() -> None:
    """Issue 36: the shipped model itself, not only the reader, is robust to paraphrase. Fed raw notes (no
    reader), its context lies nearest the context it gives the Table 5 note of the same fields for most
    generated notes (2,000 measured: 96.6%, bundle card) and most hand-written ones the generator never
    produced (106: 62%); the weights before the distillation read 2% and 4%."""
    from oncoplan.runtime.bundles import CTV_BUNDLE, shipped_bundles
    from oncoplan.training.ctv.free_text import text_path_reading

    fixture = Path(__file__).parent / "data" / "ctv_free_text_notes.json"
    result = text_path_reading(shipped_bundles() / CTV_BUNDLE, n=300, handwritten=fixture)
    assert result["generated"]["accuracy"] >= 0.9
    assert result["handwritten"]["notes"] == 106 and result["handwritten"]["accuracy"] >= 0.55

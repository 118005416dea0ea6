"""The paraphrase distillation's data and read-out (oncoplan.training.ctv.paraphrase): every Table 5 note the
U-Net can be asked about, training pairs whose free text says what their Table 5 note says, and a nearest-
template read-out that finds a note's own fields. The config run is in tests/test_ctv_bundle.py; the shipped
weights' text path on raw notes in tests/test_synth_breast_notes.py."""

from __future__ import annotations

import numpy as np
import torch

from oncoplan.ctv.note_reader import read_note
from oncoplan.ctv.notes import parse_note
from oncoplan.training.ctv.paraphrase import Targets, draw_pairs, table5_notes, text_path_accuracy


def test_table5_notes_are_every_side_surgery_and_n_stage_once() -> None:
    notes = table5_notes()
    assert len(notes) == len(set(notes)) == 20 + 100  # 2 sides x 2 surgeries x 5 N stages; both sides: 10 x 10
    assert all(len(parse_note(n)) in (1, 2) for n in notes)


def test_training_pairs_say_the_same_fields_in_free_text() -> None:
    """The reader (tested on hand-written notes) reads each generated free-text note as its Table 5 pair, and
    the draws cover bilateral notes and both surgeries."""
    free, table5 = draw_pairs(np.random.default_rng(5), 300)
    assert [read_note(f).note for f in free] == table5
    assert any(";" in t for t in table5) and {"total mastectomy" in t for t in table5} == {True, False}
    assert len(set(free)) == len(free)


class _Lookup(torch.nn.Module):
    """A stand-in text path that gives each Table 5 note a fixed context (and free text its pair's)."""

    def __init__(self, pairs: dict[str, str]) -> None:
        super().__init__()
        self.pairs, self.table = pairs, {n: i for i, n in enumerate(table5_notes())}
        self.codes = torch.randn(len(self.table), 2, 8, generator=torch.Generator().manual_seed(0))

    def forward(self, notes: list[str]) -> torch.Tensor:
        return self.codes[[self.table[self.pairs.get(n, n)] for n in notes]]


def test_nearest_template_read_out_finds_the_notes_own_fields_and_counts_misses() -> None:
    free, table5 = draw_pairs(np.random.default_rng(6), 20)
    targets = Targets(_Lookup({}))
    right = text_path_accuracy(_Lookup(dict(zip(free, table5, strict=True))), targets, free, table5)
    assert right["accuracy"] == 1.0 and right["mse"] == 0.0
    swapped = dict(zip(free, table5[1:] + table5[:1], strict=True))
    wrong = text_path_accuracy(_Lookup(swapped), targets, free, table5)
    assert wrong["accuracy"] == np.mean([a == b for a, b in zip(table5, table5[1:] + table5[:1], strict=True)])
    assert wrong["mse"] > 0
    assert targets.contrast(targets.of(table5[:3]), table5[:3], 0.01) < 1e-3  # its own context: no loss

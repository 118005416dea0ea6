"""A text path robust to paraphrase: the context of a Table 5 note, distilled into a student route (LoRA
adapters and prompt shifts) of the text encoder.

The U-Net was trained on contexts of Table 5 notes ("N1, breast conserving surgery, left side").
Fed the same fields written as a clinician writes them, the frozen LM's [SEG] read-out drifts far
from that context and the U-Net misreads it (Dice 0.285 instead of 0.917, bundle card). Fine-tuning
the whole network on paraphrased notes against the CT (tried 2026-12-07) let it lean on the image
instead of the text. Here the text encoder alone learns, against its own context:

- the teacher is the trained text encoder (frozen LM, prompts, [SEG], standardiser) on its plain route,
  fed the Table 5 note of the fields: exactly what the U-Net was trained on;
- the student is the same encoder on its student route (`lora_rank` in the inference config): LoRA
  adapters on the LM and shifts of the prompts and [SEG], all starting at zero, so the student starts as
  the teacher; only they train. Fed a generated free-text note of the fields
  (training/synth/breast_notes.py) and the Table 5 note itself, it learns to give the teacher's Table 5
  context for both (mean squared error in the standardised context space, where one unit is the spread
  across notes), so what the U-Net sees does not depend on the wording. An exact Table 5 note takes the
  teacher's route at inference (PromptedTextEncoder.forward), so the template path stays as it was
  whatever the student learns (training the prompts themselves moved 9 of the 120 Table 5 contexts
  nearer another note's, 2026-12-07; the shifts leave them where they were). A contrastive term
  (cross-entropy over the negative distances to every Table 5 note's teacher context,
  `contrast_weight`, `temperature` in mean-squared units) pulls the free-text context away from the
  Table 5 notes of other fields: bilateral notes that differ in one side's N stage lie 0.02-0.07 apart
  in the teacher's own contexts, where the mean squared error alone converges slowly.

The U-Net, the teacher's prompts and [SEG] and the standardiser's statistics are not touched. The
fields are drawn half from the synthetic sites' class mix and half uniformly over every side x surgery
x N stage (bilateral included), so every Table 5 note is seen. Progress is the nearest-template accuracy on held-out
generated notes: the share whose context lies nearest the teacher's context of their own fields
among every Table 5 note; the best state by it is kept.

Run as the bundle's `configs/paraphrase.json`, merged with `configs/inference.json` (the network's
single definition), from `--init_ckpt` (default the bundle's model.pt). The student in that checkpoint
is left out: every run starts from the teacher alone, so distilling again (after a fine-tune by
train.json, which never trains the student) gives the same student as distilling train.json's weights.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path

import numpy as np
import torch

from oncoplan.ctv.notes import N_STAGES, SIDES, SURGERY_TEXT, SideNote, format_note
from oncoplan.ctv.text_encoder import is_student_key
from oncoplan.fsio import atomic_path
from oncoplan.runtime.bundles import checkpoint_state
from oncoplan.training.synth.breast import SITES, T_STAGES, sample_record
from oncoplan.training.synth.breast_notes import free_text_note

LOG = logging.getLogger(__name__)


def table5_notes() -> list[str]:
    """Every Table 5 note the U-Net can be asked about: one side or both, any surgery and N stage."""
    clauses = [SideNote(side, surgery, n) for side, surgery, n in product(SIDES, SURGERY_TEXT, N_STAGES)]
    unilateral = [format_note([c]) for c in clauses]
    bilateral = [format_note([a, b]) for a, b in product(clauses, clauses) if (a.side, b.side) == SIDES]
    return unilateral + bilateral


def draw_sides(rng: np.random.Generator) -> list[SideNote]:
    """Half the draws from a site's class mix, half uniform over the fields (T stage kept for the text)."""
    if rng.random() < 0.5:
        site = SITES["internal" if rng.random() < 0.5 else "external"]
        return [SideNote(s.side, s.surgery, s.n_stage, s.t_stage) for s in sample_record("P", site, rng).sides]
    sides = SIDES if rng.random() < 0.25 else (SIDES[int(rng.integers(2))],)
    return [
        SideNote(
            side,
            tuple(SURGERY_TEXT)[int(rng.integers(len(SURGERY_TEXT)))],
            N_STAGES[int(rng.integers(len(N_STAGES)))],
            T_STAGES[int(rng.integers(len(T_STAGES)))],
        )
        for side in sides
    ]


def draw_pairs(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """(free-text notes, the Table 5 note of each one's fields)."""
    free, table5 = [], []
    for _ in range(n):
        sides = draw_sides(rng)
        free.append(free_text_note(sides, rng))
        table5.append(format_note(sides))
    return free, table5


def training_notes(seed: int, steps: int, batch_size: int) -> set[str]:
    """Every free-text note a `distil` run with these settings trains on (its draws replayed): evaluation
    reports its accuracy on the notes outside this set too."""
    rng = np.random.default_rng(seed)
    return {note for _ in range(steps) for note in draw_pairs(rng, batch_size)[0]}


def in_batches(encoder: Callable[[list[str]], torch.Tensor], notes: Sequence[str], batch: int = 32) -> torch.Tensor:
    """`encoder` over `notes`, `batch` notes at a time (memory: each note runs once per prompt)."""
    return torch.cat([encoder(list(notes[i : i + batch])) for i in range(0, len(notes), batch)])


class Targets:
    """The teacher's context of every Table 5 note, and the nearest-template read-out against them."""

    def __init__(self, teacher: Callable[[list[str]], torch.Tensor], batch: int = 32) -> None:
        self.notes = table5_notes()
        self.index = {n: i for i, n in enumerate(self.notes)}
        with torch.no_grad():
            self.contexts = in_batches(teacher, self.notes, batch)

    def of(self, table5: Sequence[str]) -> torch.Tensor:
        return self.contexts[[self.index[n] for n in table5]]

    def distances(self, contexts: torch.Tensor) -> torch.Tensor:
        """(batch, every Table 5 note): mean squared difference per context feature."""
        flat = self.contexts.flatten(1)
        return torch.cdist(contexts.flatten(1), flat).pow(2) / flat.shape[1]

    def contrast(self, contexts: torch.Tensor, table5: Sequence[str], temperature: float) -> torch.Tensor:
        want = torch.tensor([self.index[n] for n in table5])
        return torch.nn.functional.cross_entropy(-self.distances(contexts) / temperature, want)

    def nearest(self, contexts: torch.Tensor) -> list[str]:
        return [self.notes[int(i)] for i in self.distances(contexts).argmin(1)]


@torch.no_grad()
def text_path_accuracy(
    encoder: Callable[[list[str]], torch.Tensor], targets: Targets, notes: Sequence[str], table5: Sequence[str]
) -> dict:
    """Nearest-template accuracy and mean squared context error of `encoder` on `notes`."""
    contexts = in_batches(encoder, notes)
    nearest = targets.nearest(contexts)
    error = (contexts - targets.of(table5)).pow(2).mean(dim=(1, 2))
    right = [a == b for a, b in zip(nearest, table5, strict=True)]
    return {"accuracy": float(np.mean(right)), "mse": float(error.mean()), "nearest": nearest, "right": right}


def distil(
    network: torch.nn.Module,
    init_ckpt: str | Path,
    output_ckpt: str | Path,
    steps: int = 1500,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    warmup_steps: int = 50,
    template_weight: float = 1.0,
    contrast_weight: float = 0.1,
    temperature: float = 0.01,
    eval_every: int = 100,
    eval_notes: int = 400,
    seed: int = 100,
    curve_path: str | Path | None = None,
) -> dict:
    """Train the student route of `network.text` (adapters, prompt and [SEG] shifts) from zero; write the
    whole network's weights."""
    torch.manual_seed(seed)
    if not getattr(network.text, "lora_rank", 0):
        raise ValueError("the network's text encoder has no adapters: set lora_rank in the inference config")
    # The checkpoint's student is left out: the network then loads with a zero student (= the teacher).
    network.load_state_dict({k: v for k, v in checkpoint_state(init_ckpt).items() if not is_student_key(k)})
    encoder = network.text.eval()  # eval: the standardiser's statistics stay the U-Net's (grads still flow)
    # The teacher is the same encoder on its plain route: the Table 5 contexts the U-Net was trained on.
    targets = Targets(lambda notes: encoder.standardize(encoder.encode(notes, adapters=False)))

    def student(notes: list[str]) -> torch.Tensor:
        return encoder.standardize(encoder.encode(notes, adapters=True))

    val_free, val_table5 = draw_pairs(np.random.default_rng(seed + 1), eval_notes)
    encoder.requires_grad_(False)
    params = list(encoder.student_parameters().values())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = np.random.default_rng(seed)
    start = text_path_accuracy(student, targets, val_free, val_table5)
    curve = [{"step": 0, "loss": None, "val_accuracy": start["accuracy"], "val_mse": start["mse"], "seconds": 0.0}]
    LOG.info("step 0: held-out nearest-template accuracy %.3f, context MSE %.3f", start["accuracy"], start["mse"])
    best = (start["accuracy"], -start["mse"], 0, _student_state(encoder))
    began, running = time.monotonic(), []
    for step in range(1, steps + 1):
        free, table5 = draw_pairs(rng, batch_size)
        out = student(free + table5)
        want = targets.of(table5)
        loss = (out[:batch_size] - want).pow(2).mean() + template_weight * (out[batch_size:] - want).pow(2).mean()
        if contrast_weight:
            loss = loss + contrast_weight * targets.contrast(out[:batch_size], table5, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            val = text_path_accuracy(student, targets, val_free, val_table5)
            row = {
                "step": step,
                "loss": float(np.mean(running)),
                "val_accuracy": val["accuracy"],
                "val_mse": val["mse"],
                "seconds": round(time.monotonic() - began, 1),
            }
            curve.append(row)
            running = []
            LOG.info(
                "step %d/%d: loss %.4f, held-out nearest-template accuracy %.3f, context MSE %.4f (%.0f s)",
                step, steps, row["loss"], val["accuracy"], val["mse"], row["seconds"],
            )  # fmt: skip
            if (val["accuracy"], -val["mse"]) > best[:2]:
                best = (val["accuracy"], -val["mse"], step, _student_state(encoder))
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name in best[3]:
                param.copy_(best[3][name])
    encoder.requires_grad_(False)
    _atomic_save({"model": network.state_dict()}, Path(output_ckpt))
    if curve_path:
        _write_curve(curve, Path(curve_path))
    summary = {"best_step": best[2], "val_accuracy": best[0], "val_mse": -best[1], "steps": steps}
    LOG.info("kept step %d (held-out accuracy %.3f); wrote %s", best[2], best[0], Path(output_ckpt).name)
    return summary


def _student_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.student_parameters().items()}


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_curve(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_curve(rows, path.with_suffix(".png"))


def plot_curve(rows: list[dict], path: Path) -> None:
    """Held-out nearest-template accuracy and context error by step (the curve's PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["val_accuracy"]) for r in rows], "o-", label="held-out nearest-template accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("nearest-template accuracy")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.semilogy(steps, [float(r["val_mse"]) for r in rows], "s-", color="tab:orange", label="context MSE")
    ax2.set_ylabel("context MSE (standardised)")
    ax.set_title("paraphrase distillation of the text path (synthetic notes)")
    handles = ax.get_lines() + ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

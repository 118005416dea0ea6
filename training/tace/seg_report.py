"""Per-case liver/tumor metrics of the assistant model, summarised with bootstrap CIs (an ignite handler)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from oncoplan.stats import bootstrap_ci, dice
from oncoplan.tace.labels import LABELS, TUMOR_LABELS, viable_fraction

METRICS = ("liver_dice", "tumor_dice", "viable_dice", "viable_fraction_error")


def case_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of the whole liver (liver + lesion), the whole lesion and its viable part; viable-fraction error."""
    return {
        "liver_dice": dice(pred > 0, truth > 0),
        "tumor_dice": dice(np.isin(pred, TUMOR_LABELS), np.isin(truth, TUMOR_LABELS)),
        "viable_dice": dice(pred == LABELS["viable"], truth == LABELS["viable"]),
        "viable_fraction_error": abs(viable_fraction(pred) - viable_fraction(truth)),
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {m: list(bootstrap_ci([r[m] for r in rows])) for m in METRICS}


def markdown(summary: dict[str, list[float]], n: int, title: str) -> str:
    cells = " | ".join(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for v in (summary[m] for m in METRICS))
    header = f"| {' | '.join(METRICS)} |\n|{'---|' * len(METRICS)}"
    return f"{title} (n={n}; mean [bootstrap 95% CI])\n\n{header}\n| {cells} |\n"


class SegmentationReport:
    """Collect `case_metrics` of every evaluated case; write `<name>.json` and `<name>.md` when the run ends.

    Expects post-processed outputs whose "pred" and "label" are channel-first label maps (argmax taken).
    """

    def __init__(self, output_dir: str, name: str = "assistant_evaluation", title: str = "Assistant model") -> None:
        self.output_dir, self.name, self.title = Path(output_dir), name, title
        self.rows: list[dict[str, float]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        for item in engine.state.output:
            pred, label = (np.asarray(_numpy(item[k])[0]).round().astype(np.uint8) for k in ("pred", "label"))
            row = case_metrics(pred, label)
            meta = getattr(item["image"], "meta", {}) if "image" in item else {}
            row["case"] = str(meta.get("filename_or_obj", len(self.rows)))
            self.rows.append(row)

    def _write(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary = summarise(self.rows)
        (self.output_dir / f"{self.name}.json").write_text(
            json.dumps({"n": len(self.rows), "summary": summary, "cases": self.rows}, indent=1)
        )
        (self.output_dir / f"{self.name}.md").write_text(markdown(summary, len(self.rows), self.title))


def _numpy(value: object) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

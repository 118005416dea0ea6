"""Ignite handlers shared by the bundles' train configs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class TrainingCurve:
    """Per-epoch mean loss and the validator's key metric, saved as CSV and PNG after every epoch."""

    def __init__(self, output_dir: str, validator=None, name: str = "training_curve") -> None:
        self.out = Path(output_dir)
        self.validator = validator
        self.name = name
        self.rows: list[dict] = []
        self._losses: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _iteration(self, engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        self._losses += [float(o["loss"]) for o in items if isinstance(o, dict) and "loss" in o]

    def _epoch(self, engine) -> None:
        metric = None
        if self.validator is not None and self.validator.state.epoch_length:
            metric = self.validator.state.metrics.get(self.validator.state.key_metric_name)
        self.rows.append(
            {
                "epoch": engine.state.epoch,
                "loss": float(np.mean(self._losses)) if self._losses else None,
                "val_metric": metric,
            }
        )
        self._losses = []
        self._save()

    def _save(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"{self.name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "loss", "val_metric"])
            w.writeheader()
            w.writerows(self.rows)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ep = [r["epoch"] for r in self.rows]
        ax.plot(ep, [r["loss"] for r in self.rows], label="train loss")
        val = [(r["epoch"], r["val_metric"]) for r in self.rows if r["val_metric"] is not None]
        if val:
            ax2 = ax.twinx()
            ax2.plot(*zip(*val, strict=True), "o-", color="tab:orange", label="validation metric")
            ax2.set_ylabel("validation metric")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(self.name.replace("_", " "))
        fig.tight_layout()
        fig.savefig(self.out / f"{self.name}.png", dpi=100)
        plt.close(fig)

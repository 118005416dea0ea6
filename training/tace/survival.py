"""The TACE heuristic function (MeWM seed, appendix B.4): survival risk from pre- and post-treatment CT.

An MC3-style 3D ResNet encodes [CT, tumor mask] patches of both studies, MONAI's two-way transformer
lets the pre and post token sets attend to each other, gated-attention multiple-instance pooling
(Ilse et al. 2018) turns the K patches of one case into one embedding, and fully connected layers
give one log-risk. Training minimises the Cox partial likelihood over a batch of cases.

Everything a bundle config can say (transforms, optimiser, engines) lives in
`bundles/tace_survival/configs`; this module holds what it cannot.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from torch import nn

from oncoplan.errors import InputError
from oncoplan.tace.clinical import WEEKS_PER_MONTH
from oncoplan.tace.survival_net import BAG_KEYS
from oncoplan.training.tace.concordance import harrell_c, uno_c, uno_tau
from oncoplan.training.tace.data import load_prepared, subset

FIVE_YEARS_MONTHS = 60.0


# ---------------------------------------------------------------- data


def _cohort_table(cohort_csv: str | Path) -> dict[str, tuple[float, float]]:
    """case id -> (OS weeks, event) from a cohort CSV (TCIA_ID, OS, Death_1_StillAliveorLostToFU_0)."""
    with open(cohort_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for row in rows:
        try:
            out[row["TCIA_ID"]] = (float(row["OS"]), float(row["Death_1_StillAliveorLostToFU_0"]))
        except (KeyError, ValueError):
            continue  # missing survival: the case is unlabelled
    return out


def survival_items(
    prepared: str | Path,
    cohort_csv: str | Path | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    labelled_only: bool = True,
) -> list[dict[str, Any]]:
    """Per case: the four registered volumes, `case_id`, and "label" = [OS months, event] (NaN if unknown).

    OS and event come from the prepared datalist (prepare records them) unless `cohort_csv` is given.
    "label" is the name MONAI's default `prepare_batch` hands to the loss as the target.
    """
    table = _cohort_table(cohort_csv) if cohort_csv else None
    items = []
    for case in subset(load_prepared(prepared), fraction, seed):
        recorded = (case.get("os_weeks"), case.get("event"))
        weeks, event = table.get(str(case["case_id"]), (None, None)) if table is not None else recorded
        known = weeks is not None and event is not None and math.isfinite(float(weeks))
        if labelled_only and not known:
            continue
        label = [float(weeks) / WEEKS_PER_MONTH, float(event)] if known else [math.nan, math.nan]
        item = {k: case[k] for k in BAG_KEYS}
        item.update(case_id=str(case["case_id"]), label=np.asarray(label, dtype=np.float32))
        items.append(item)
    if labelled_only and not items:
        raise InputError(f"{prepared}: no case with overall survival and event")
    return items


# ---------------------------------------------------------------- loss


class CoxPHLoss(nn.Module):
    """Negative Cox partial log-likelihood with Breslow ties, averaged over the events of the batch.

    risk: (B,) or (B, 1) log-risk; target: (B, 2) = [time, event]. Each event i contributes
    risk_i - log sum_{j: t_j >= t_i} exp(risk_j) (tied times share one risk set: Breslow).
    `five_year_weight` > 0 adds a BCE term on death within `horizon` months with the log-risk as the
    logit (cases censored before the horizon are left out). A batch without events gives 0.
    """

    def __init__(self, five_year_weight: float = 0.0, horizon: float = FIVE_YEARS_MONTHS) -> None:
        super().__init__()
        self.five_year_weight, self.horizon = five_year_weight, horizon

    def forward(self, risk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        risk = risk.reshape(-1).float()
        time, event = target[:, 0].float(), target[:, 1].float()
        at_risk = time[None, :] >= time[:, None]  # row i: the risk set of i
        log_denominator = torch.logsumexp(risk[None, :].masked_fill(~at_risk, -math.inf), dim=1)
        loss = -((risk - log_denominator) * event).sum() / event.sum().clamp(min=1)
        if self.five_year_weight > 0:
            died = (event > 0) & (time <= self.horizon)
            known = died | (time > self.horizon)
            if known.any():
                bce = nn.functional.binary_cross_entropy_with_logits(risk[known], died[known].float())
                loss = loss + self.five_year_weight * bce
        return loss


# ---------------------------------------------------------------- evaluation


def bootstrap_c(
    fn: Callable[[np.ndarray], float], n_cases: int, n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Point estimate on all cases and percentile-bootstrap CI over resampled cases.

    (`oncoplan.stats.bootstrap_ci` bootstraps a mean of per-case values; a C-index is not one.)
    `fn` maps case indices to the statistic; resamples where it is undefined are skipped.
    """
    rng = np.random.default_rng(seed)
    stats = np.array([fn(rng.integers(0, n_cases, n_cases)) for _ in range(n)])
    stats = stats[np.isfinite(stats)]
    point = fn(np.arange(n_cases))
    if not stats.size:
        return point, math.nan, math.nan
    alpha = (1 - level) / 2
    return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def c_index_summary(
    time: Sequence[float],
    event: Sequence[float],
    risk: Sequence[float],
    ref_time: Sequence[float],
    ref_event: Sequence[float],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Harrell's and Uno's C with bootstrap 95% CIs, on the cases whose survival is known."""
    t, e, r = (np.asarray(v, dtype=float) for v in (time, event, risk))
    keep = np.isfinite(t) & np.isfinite(e)
    t, e, r = t[keep], e[keep], r[keep]
    out: dict[str, Any] = {"n": int(t.size), "events": int((e > 0).sum())}
    if not t.size:
        return {**out, "harrell_c": [math.nan] * 3, "uno_c": [math.nan] * 3, "uno_tau_months": math.nan}
    out["harrell_c"] = list(bootstrap_c(lambda i: harrell_c(t[i], e[i], r[i]), t.size, n_bootstrap, seed=seed))
    out["uno_c"] = list(
        bootstrap_c(lambda i: uno_c(t[i], e[i], r[i], ref_time, ref_event), t.size, n_bootstrap, seed=seed)
    )
    out["uno_tau_months"] = uno_tau(t, ref_time, ref_event)
    return out


class HarrellC(CumulativeIterationMetric):
    """Harrell's C over everything seen since reset (gathered across ranks): the validation key metric.

    y_pred: log-risk (B, 1); y: (B, 2) = [time, event]. NaN when undefined on the validation set.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("HarrellC needs [time, event] targets")
        return torch.cat([y_pred.reshape(-1, 1).float(), y.reshape(-1, 2).float()], dim=1)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or not data.numel():
            return torch.tensor(math.nan)
        data = data.cpu().numpy()
        return torch.tensor(harrell_c(data[:, 1], data[:, 2], data[:, 0]))


# ---------------------------------------------------------------- reports (ignite handlers)


def _rows(engine) -> list[dict[str, Any]]:
    """(case_id, risk, time, event) of a decollated evaluator iteration."""
    rows = []
    for item, out in zip(engine.state.batch, engine.state.output, strict=True):
        label = np.asarray(torch.as_tensor(out["label"]).detach().cpu(), dtype=float).reshape(-1)
        rows.append(
            {
                "case_id": str(item.get("case_id", "")),
                "risk": float(torch.as_tensor(out["pred"]).reshape(-1)[0]),
                "os_months": float(label[0]),
                "event": float(label[1]),
            }
        )
    return rows


class _CaseCollector:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.rows.extend(_rows(e)))
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine) -> None:
        raise NotImplementedError


class RiskWriter(_CaseCollector):
    """Per-case log-risk (higher: shorter expected survival) as `<name>.csv` and `<name>.json`."""

    def __init__(self, output_dir: str, name: str = "risk") -> None:
        super().__init__()
        self.output_dir, self.name = Path(output_dir), name

    def _write(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fields = ["case_id", "risk", "os_months", "event"]
        with open(self.output_dir / f"{self.name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        (self.output_dir / f"{self.name}.json").write_text(json.dumps(clean, indent=1))


class SurvivalReport(_CaseCollector):
    """Harrell's and Uno's C with bootstrap CIs of the evaluated cases, as `<name>.json` and `<name>.md`.

    `reference` (the training cases, `survival_items` entries) gives the censoring distribution for Uno's C.
    """

    def __init__(
        self,
        output_dir: str,
        reference: Sequence[Mapping[str, Any]],
        name: str = "survival_evaluation",
        title: str = "Heuristic function (survival risk)",
        n_bootstrap: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.output_dir, self.name, self.title = Path(output_dir), name, title
        labels = np.array([np.asarray(r["label"], dtype=float) for r in reference]).reshape(-1, 2)
        self.ref_time, self.ref_event = labels[:, 0], labels[:, 1]
        self.n_bootstrap, self.seed = n_bootstrap, seed

    def _write(self, engine) -> None:
        summary = c_index_summary(
            [r["os_months"] for r in self.rows],
            [r["event"] for r in self.rows],
            [r["risk"] for r in self.rows],
            self.ref_time,
            self.ref_event,
            self.n_bootstrap,
            self.seed,
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"{self.name}.json").write_text(
            json.dumps({"summary": summary, "cases": self.rows}, indent=1, allow_nan=True)
        )
        (self.output_dir / f"{self.name}.md").write_text(markdown(summary, self.title, self.n_bootstrap))


def markdown(summary: Mapping[str, Any], title: str, n_bootstrap: int = 1000) -> str:
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    return (
        f"{title}: n={summary['n']} cases, {summary['events']} deaths "
        f"(C-index [percentile bootstrap 95% CI, {n_bootstrap} resamples])\n\n"
        "| Harrell's C | Uno's C | Uno tau (months) |\n|---|---|---|\n"
        f"| {fmt(summary['harrell_c'])} | {fmt(summary['uno_c'])} | {summary.get('uno_tau_months', math.nan):.1f} |\n"
    )

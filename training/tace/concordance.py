"""The concordance index, once: Harrell's C and Uno's IPCW C, vectorised and equal to scikit-survival's
``concordance_index_censored`` and ``concordance_index_ipcw`` (checked in the tests).

A pair (i, j) is comparable when i died and j lived longer, or was censored at i's death time; the
pair is concordant when i's risk is higher, and counts one half when the risks tie (within 1e-8).
Harrell's C is the share of concordant comparable pairs; Uno's C weighs each pair by 1/G(t_i)^2, G
the Kaplan-Meier estimate of the censoring survival on a reference (training) set, and drops pairs
whose death is at or after a truncation time tau. No comparable pair (or zero weight): NaN.

Users: the survival bundle's validation metric and report (`training/tace/survival.py`: `harrell_c`,
`uno_c` with tau from `uno_tau`) and the CoxPH baselines (`training/tace/survival_baselines.py`:
per-fold and bootstrapped C through `concordance`, `fold_concordance`, `uno_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TIED_TOL = 1e-8


def _structured(time: Sequence[float], event: Sequence[float]) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event) > 0, time=np.asarray(time, dtype=float))


def _censoring(ref_time: Sequence[float], ref_event: Sequence[float]):
    """Kaplan-Meier of censoring on the reference set (scikit-survival)."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    return CensoringDistributionEstimator().fit(_structured(ref_time, ref_event))


def comparable(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Pairs (i, j) scikit-survival compares: i an event and j later, or j censored at the same time."""
    later = time[None, :] > time[:, None]
    tied_censored = (time[None, :] == time[:, None]) & ~event[None, :]
    return event[:, None] & (later | tied_censored)


def _pair_score(risks: np.ndarray, tied_tol: float) -> np.ndarray:
    """(k, n, n): 1 where row i's risk is above j's, 1/2 where they tie, else 0."""
    diff = risks[:, :, None] - risks[:, None, :]
    return np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))


def _pair_weights(event: np.ndarray, time: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    w = comparable(np.asarray(event, dtype=bool), np.asarray(time, dtype=float)).astype(float)
    if weights is not None:
        w *= np.asarray(weights, dtype=float)[:, None]
    return w


def concordance(
    event: np.ndarray,
    time: np.ndarray,
    risks: np.ndarray,
    weights: np.ndarray | None = None,
    tied_tol: float = TIED_TOL,
) -> np.ndarray | float:
    """C of each row of `risks` (k, n) or of one risk vector (n,); `weights` per patient i of a pair
    (None: Harrell; squared inverse censoring weights: Uno). NaN without comparable pairs."""
    r = np.atleast_2d(np.asarray(risks, dtype=float))
    w = _pair_weights(event, time, weights)
    den = w.sum()
    out = (_pair_score(r, tied_tol) * w[None]).sum(axis=(1, 2)) / den if den > 0 else np.full(r.shape[0], np.nan)
    return out if np.ndim(risks) == 2 else float(out[0])


def fold_concordance(
    event: np.ndarray, time: np.ndarray, risks: np.ndarray, folds: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """C within each test fold: `risks` and `folds` (repeats, n) hold each patient's out-of-fold risk
    and fold index per repeat; only pairs of one fold are compared. Returns (repeats, n_folds), NaN for
    a fold without comparable pairs."""
    r = np.asarray(risks, dtype=float)
    f = np.asarray(folds, dtype=int)
    same = f[:, :, None] == f[:, None, :]
    pair_w = _pair_weights(event, time, weights)[None] * same
    num_i, den_i = (_pair_score(r, TIED_TOL) * pair_w).sum(axis=2), pair_w.sum(axis=2)
    n_folds = int(f.max()) + 1
    out = np.full((r.shape[0], n_folds), np.nan)
    for k in range(r.shape[0]):
        num = np.bincount(f[k], weights=num_i[k], minlength=n_folds)
        den = np.bincount(f[k], weights=den_i[k], minlength=n_folds)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(den > 0, num / den, np.nan)
    return out


def _ipcw_squared(cens, event: np.ndarray, time: np.ndarray, tau: float) -> np.ndarray:
    """Uno's weights 1/G(t_i)^2 for deaths before tau, zero otherwise, as `concordance_index_ipcw`
    computes them; ValueError where G is zero or undefined (a death after the reference's last time)."""
    w = np.zeros(len(time))
    sel = np.asarray(event, dtype=bool) & (np.asarray(time, dtype=float) < tau)
    if sel.any():
        g = cens.predict_proba(np.asarray(time, dtype=float)[sel])
        if (g == 0).any():
            raise ValueError("censoring survival function is zero before tau")
        w[sel] = np.square(1.0 / g)
    return w


def uno_weights(
    train_event: np.ndarray, train_time: np.ndarray, event: np.ndarray, time: np.ndarray, tau: float
) -> tuple[np.ndarray, float]:
    """Uno's weights 1/G(t_i)^2 for events before tau (G: Kaplan-Meier of censoring on the training
    data), zero otherwise; tau is lowered to the training data's longest time. Returns (weights, tau)."""
    tau = float(min(tau, np.max(train_time)))
    return _ipcw_squared(_censoring(train_time, train_event), event, time, tau), tau


def _finite(time: np.ndarray, risk: np.ndarray) -> None:
    if len(time) != len(risk) or not (np.isfinite(time).all() and np.isfinite(risk).all()):
        raise ValueError("time and risk must be finite and of one length")


def harrell_c(time: Sequence[float], event: Sequence[float], risk: Sequence[float]) -> float:
    """Harrell's C; NaN when no pair is comparable (no event, or every event last)."""
    time, event, risk = (np.asarray(v, dtype=float) for v in (time, event, risk))
    if not (event > 0).any():  # before the finite check, as scikit-survival was called: no event, NaN
        return math.nan
    _finite(time, risk)
    return concordance(event > 0, time, risk)


def uno_tau(time: Sequence[float], ref_time: Sequence[float], ref_event: Sequence[float]) -> float:
    """Truncation time: the test set's largest time, clipped where the reference censoring
    survival (Kaplan-Meier of censoring in the training set) reaches zero and IPCW is undefined."""
    return _tau(time, _censoring(ref_time, ref_event))


def _tau(time: np.ndarray, cens) -> float:
    zero = cens.unique_time_[cens.prob_ <= 0]
    return float(min(np.max(time), zero.min() if zero.size else math.inf))


def uno_c(
    time: Sequence[float],
    event: Sequence[float],
    risk: Sequence[float],
    ref_time: Sequence[float],
    ref_event: Sequence[float],
) -> float:
    """Uno's IPCW C up to `uno_tau`, censoring weights from the reference (training) set; NaN when no
    pair is comparable or a death before tau lies where the censoring survival is zero or undefined."""
    time, event, risk = (np.asarray(v, dtype=float) for v in (time, event, risk))
    try:
        _finite(time, risk)
    except ValueError:  # scikit-survival's refusal of non-finite values was a NaN here, and stays one
        return math.nan
    cens = _censoring(ref_time, ref_event)
    try:
        weights = _ipcw_squared(cens, event > 0, time, _tau(time, cens))
    except ValueError:
        return math.nan
    return concordance(event > 0, time, risk, weights)

"""A heuristic that orders one patient's protocols: Cox risk of a simulated outcome from the response
the assistant measures in it, the regimen and the patient's clinical covariates (synthetic cohorts).

Why a second heuristic: the survival network (:mod:`.heuristic`, the paper's B.4) learned risk
*between* patients, which is what its Cox loss rewards; over one patient's protocols its risk barely
follows the true survival (``docs/README.md``, stage ranking: Spearman 0.32, where the simulated
viable fraction alone reaches 0.41 and the truth's 0.78). What differs between two protocols for one
patient is how much viable tumor they leave (mRECIST's driver, read off the simulated scan) and what
the regimen costs the patient (systemic toxicity of each cytotoxic drug and the liver injury of each
embolic, worse with poor liver function; no image shows it). This model puts both in one proportional-hazards risk:

    ln(1 + residual viable cm3), drugs, embolics, each x Child-Pugh, absolute alcohol   (what the protocol changes)
    Child-Pugh, log10(1 + AFP), vascular invasion, ln(1 + tumor burden cm3)      (the patient)

fitted with scikit-survival (:func:`oncoplan.training.tace.survival_baselines.make_model`: median
imputation, z-scoring, ridge alpha 0.1) on training cohorts, where the residual viable volume is
MEASURED on each case's post-treatment label map (its "viable" voxels) and the regimen is the one the
case received. At planning, the residual viable volume of a simulated outcome is measured the same way:
the viable voxels of the assistant's label map of the simulated window
(:class:`oncoplan.tace.world_model.Simulation`, rendering noise outside the lesion already
removed), and the tumor burden is the pre-treatment tumor mask of the window; covariates a caller does
not know take the training median (the app names them: :meth:`ResponseCox.covariates_used`).

The fitted model is a JSON file of named coefficients (log hazard ratio per unit), means and medians:

    python -m oncoplan.training.planner.response_fit --train COHORT [COHORT ...] --out FILE.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from oncoplan.errors import InputError
from oncoplan.fsio import atomic_path
from oncoplan.tace.clinical import CHILD_PUGH
from oncoplan.tace.labels import LABELS

if TYPE_CHECKING:
    from oncoplan.tace.actions import Protocol
    from oncoplan.tace.world_model import Simulation

RESPONSE = "ln(1 + residual viable cm3)"
REGIMEN = ("drugs", "drugs x Child-Pugh", "embolics", "embolics x Child-Pugh", "absolute alcohol")
# Terms added after models were shipped without them (2026-12-07): such a model scores them 0 (no effect).
LATER_TERMS = ("embolics", "embolics x Child-Pugh")
CLINICAL = ("Child-Pugh", "log10 AFP", "vascular invasion", "ln(1 + burden cm3)")
FEATURES = (RESPONSE, *REGIMEN, *CLINICAL)
# The table column each clinical covariate is read from (:func:`clinical_covariates`).
COVARIATE_COLUMNS = {"Child-Pugh": "CPS", "log10 AFP": "AFP", "vascular invasion": "Vascular invasion"}


def regimen_features(protocol: Protocol, child_pugh: float) -> dict[str, float]:
    """What a regimen costs the patient beyond its effect on the tumor: systemic toxicity of each drug, the
    ischaemic injury of each embolic to the liver around the tumour, both worse with poorer liver function."""
    drugs = float(len(protocol.drugs))
    embolics = float(len(protocol.embolics))
    return {
        "drugs": drugs,
        "drugs x Child-Pugh": drugs * child_pugh,
        "embolics": embolics,
        "embolics x Child-Pugh": embolics * child_pugh,
        "absolute alcohol": float("Absolute Alcohol" in protocol.embolics),
    }


def clinical_covariates(row: Mapping[str, Any] | None) -> dict[str, float]:
    """Child-Pugh, log10(1 + AFP) and vascular invasion from a cohort row (TCIA column names); NaN where
    unknown (the model imputes its training median)."""
    row = {} if row is None else row

    def number(key: str) -> float:
        try:
            value = float(row.get(key, math.nan))
        except (TypeError, ValueError):
            return math.nan
        return value if math.isfinite(value) else math.nan

    afp = number("AFP")
    return {
        "Child-Pugh": float(CHILD_PUGH.get(str(row.get("CPS", "")).strip(), math.nan)),
        "log10 AFP": math.log10(1.0 + afp) if afp >= 0 else math.nan,
        "vascular invasion": number("Vascular invasion"),
    }


def covariate_text(name: str, value: float) -> str:
    """A covariate's value as a clinician reads it (Child-Pugh 0 -> "A", log10 AFP 2 -> "99 ng/mL")."""
    if name == "Child-Pugh":
        classes = {v: k for k, v in CHILD_PUGH.items()}
        return f"Child-Pugh {classes.get(round(value), f'{value:.2f} (ordinal)')}"
    if name == "log10 AFP":
        return f"AFP {10**value - 1:.0f} ng/mL"
    if name == "vascular invasion":
        return "vascular invasion " + ("yes" if value >= 0.5 else "no")
    return f"{name} {value:.3g}"


@dataclass(frozen=True)
class ResponseCox:
    """A fitted model: risk = sum of coef * (x - mean) over FEATURES, NaN inputs replaced by the median."""

    coef: dict[str, float]
    mean: dict[str, float]
    median: dict[str, float]
    trained_on: tuple[str, ...] = ()
    cases: int = 0
    events: int = 0
    left_out: tuple[str, ...] = ()  # terms not fitted (coefficient 0)

    def __post_init__(self) -> None:
        for part in (self.coef, self.mean, self.median):
            missing = [f for f in FEATURES if f not in part]
            if missing:
                raise ValueError(f"response Cox model lacks {', '.join(missing)}")

    def risk(self, features: Mapping[str, np.ndarray | float]) -> np.ndarray:
        """The linear predictor (broadcast over array-valued features); higher = shorter survival."""
        total: np.ndarray | float = 0.0
        for name in FEATURES:
            x = np.asarray(features[name], dtype=np.float64)
            x = np.where(np.isnan(x), self.median[name], x)
            total = total + self.coef[name] * (x - self.mean[name])
        return np.asarray(total, dtype=np.float64)

    def covariates_used(self, row: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        """Per clinical covariate of the model: the value :meth:`risk` uses for `row` (the row's, else the
        training median), whether it was imputed, and the schema field (:mod:`oncoplan.tace.patient`)
        that would have given it."""
        from oncoplan.tace.patient import field_named

        out = {}
        for name, value in clinical_covariates(row).items():
            imputed = math.isnan(value)
            used = self.median[name] if imputed else value
            out[name] = {
                "value": round(float(used), 4),
                "imputed": imputed,
                "field": field_named(COVARIATE_COLUMNS[name]),
                "reads_as": covariate_text(name, used),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "sksurv CoxPHSurvivalAnalysis (Breslow ties, ridge alpha 0.1 on z-scored features); "
            "coef: log hazard ratio per unit",
            "features": list(FEATURES),
            "coef": self.coef,
            "hazard_ratio": {k: round(math.exp(v), 4) for k, v in self.coef.items()},
            "mean": self.mean,
            "median": self.median,
            "trained_on": list(self.trained_on),
            "cases": self.cases,
            "events": self.events,
            **({"left_out": list(self.left_out)} if self.left_out else {}),
            "synthetic": True,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ResponseCox:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            absent = {k: 0.0 for k in LATER_TERMS if k not in data["coef"]}  # fitted before the term existed
            return cls(
                {k: float(v) for k, v in data["coef"].items()} | absent,
                {k: float(v) for k, v in data["mean"].items()} | absent,
                {k: float(v) for k, v in data["median"].items()} | absent,
                tuple(data.get("trained_on", ())),
                int(data.get("cases", 0)),
                int(data.get("events", 0)),
                tuple(data.get("left_out", ())),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a response Cox model ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- scoring simulations


def layout_viable_cm3(mask_window: np.ndarray, simulation: Simulation, voxel_cm3: float) -> np.ndarray:
    """Viable volume (P, T) of the compartment layouts the renderer was conditioned on: the world model's
    response before rendering and segmentation. Counted, not drawn: every layout of a response holds the
    same number of viable voxels (`oncoplan.tace.layout.layout_viable_voxels`), wherever its seed puts them,
    so a search can score the whole action space at the cost of the response head."""
    from oncoplan.tace.layout import layout_viable_voxels

    count = int(np.count_nonzero(mask_window[simulation.patch_slices] > 0))  # as the renderer takes the mask
    viable = np.array([layout_viable_voxels(count, r) for r in simulation.response], dtype=np.float64)
    return np.repeat(viable[:, None], simulation.samples, axis=1) * voxel_cm3


class ResponseRiskScorer:
    """Risk (P, T) of every simulated outcome under the fitted model; see the module doc."""

    name = "response_cox"

    def __init__(self, model: ResponseCox, pixdim: Sequence[float], readout: str = "segmentation") -> None:
        """`readout`: the residual viable volume as the assistant segments the rendered scan
        (``segmentation``, MeWM), or as the compartment layout the renderer was asked to draw
        (``layout``: the response head's prediction placed in the lesion, no rendering or reading)."""
        if readout not in ("segmentation", "layout"):
            raise ValueError(f"readout must be segmentation or layout, got {readout!r}")
        self.model, self.readout = model, readout
        self.name = "response_cox" if readout == "segmentation" else "response_cox_layout"
        # The layout read-out needs only the response head's prediction: a search scoring with it asks
        # the world model for no rendering (WorldModel.respond).
        self.reads_renderings = readout == "segmentation"
        self.voxel_cm3 = float(np.prod([float(v) for v in pixdim])) / 1000.0

    @classmethod
    def from_file(cls, path: str | Path, pixdim: Sequence[float], readout: str = "segmentation") -> ResponseRiskScorer:
        return cls(ResponseCox.load(path), pixdim, readout)

    def __call__(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        simulation: Simulation,
        protocols: Sequence[Protocol],
        clinical: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        if len(protocols) != len(simulation.response):
            raise ValueError(f"{len(protocols)} protocols for {len(simulation.response)} simulated ones")
        burden = self.burden_cm3(mask_window)
        if self.readout == "layout":
            residual = layout_viable_cm3(mask_window, simulation, self.voxel_cm3)
        else:
            spatial = tuple(range(2, simulation.labels.ndim))
            residual = np.count_nonzero(simulation.labels == LABELS["viable"], axis=spatial) * self.voxel_cm3
        return self.risk(residual, protocols, burden, clinical)

    def burden_cm3(self, mask_window: np.ndarray) -> float:
        """Pre-treatment tumor volume of the planning window."""
        return float(np.count_nonzero(mask_window)) * self.voxel_cm3

    def risk(
        self,
        residual_cm3: np.ndarray,
        protocols: Sequence[Protocol],
        burden_cm3: float,
        clinical: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Risk of residual viable volumes (P, T) (or (P,)) left by `protocols` in one patient."""
        residual = np.asarray(residual_cm3, dtype=np.float64)
        covariates = clinical_covariates(clinical)
        child_pugh = covariates["Child-Pugh"]
        if math.isnan(child_pugh):
            child_pugh = self.model.median["Child-Pugh"]
        regimen = [regimen_features(p, child_pugh) for p in protocols]
        per_protocol = (len(protocols),) + (1,) * (residual.ndim - 1)
        features: dict[str, np.ndarray | float] = {
            RESPONSE: np.log1p(residual),
            **{name: np.array([r[name] for r in regimen]).reshape(per_protocol) for name in REGIMEN},
            **covariates,
            "ln(1 + burden cm3)": math.log1p(burden_cm3),
        }
        return np.broadcast_to(self.model.risk(features), residual.shape).astype(np.float64)

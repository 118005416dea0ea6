"""Planning evaluation on held-out synthetic cases: the MeWM planning table, plus regret.

For every case of a prepared cohort (``python -m oncoplan.training.tace.prepare``) whose raw cohort
holds the ground truth (``truth.json``: the hidden response profile), each method chooses one
protocol, which is scored two ways:

* against the physician's protocol ("gold", the ``chemotherapy`` column of ``cohort.csv``, drawn
  from imperfect site practice) by the item sets: F1, Jaccard, precision and recall, as the paper;
* against the ground truth: REGRET, the expected overall survival (weeks, and months) lost against
  the oracle (:func:`oncoplan.training.synth.liver.regret_weeks`), the oracle being searched over
  the same valid space the planner searches (conflict-free protocols of the case's action set with
  at most ``drug_horizon`` drugs and ``embolic_horizon`` embolics). A protocol outside that space
  (e.g. a three-drug practice regimen) can beat the oracle: its regret is then negative.

Two paths plan the ``world_model`` method (``--path``): ``evaluation`` (default: the prepared case's
model-space CT with its label mask, or with the assistant's segmentation of that CT (``--mask assistant``),
the covariates from ``cohort.csv``) and ``app`` (:mod:`oncoplan.training.planner.app_path`: ``oncoplan plan``
on the case's pre-treatment DICOM with a clinical.json written from its row, or none, its plan.json read
back); both are scored alike. Both plan with the app's defaults: the offline policy ranked by the shipped
prior (both synthetic sites pooled), not by the case's site practice (``--practice-prior site``, an
ablation: on the external site it cost 9 months of regret, training/planner/docs/README.md).

Methods: ``world_model`` (the planner: offline policy + world model + heuristic, beam search or
best-of-N), ``policy_top1`` (the same policy's first candidate, no search), ``most_common`` (the most
used protocol of the case's site: from a training cohort's ``chemotherapy`` column, else from
the synthetic practice table), ``random`` (a seeded uniform draw from the valid space), ``gold``,
``population_oracle`` (the ground truth's best protocol for the patient's covariates, averaged over
the hidden response profiles: what a planner that reads nothing of the profile can reach at best),
``image_informed_oracle`` (the same averaged over the profiles consistent with what the pre-treatment
images show, generator ``liver-2``: the ceiling of a perfect reader of the images; equal to the population
oracle on ``liver-1`` cohorts, whose images show nothing) and ``oracle``. Each gets per-case values and
means with 1,000-sample percentile-bootstrap 95% CIs; the planner minus each baseline gets paired
bootstrap CIs (resampling cases), and the share of the achievable personalisation (population oracle minus
image-informed oracle) that the planner captures. Everything is written
to ``planning_evaluation.json`` and ``planning_evaluation.md`` (labelled SYNTHETIC), atomically.

    python -m oncoplan.training.planner.evaluate --prepared DIR --cohort DIR --out DIR \\
        [--dynamics BUNDLE --assistant BUNDLE --survival BUNDLE] [--limit N] [--settings cpu|paper] \\
        [--clinical cohort|none] [--path evaluation|app [--models MODELS]]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from oncoplan.errors import InputError, json_object
from oncoplan.planner.models import (
    DEFAULT_HEURISTIC,
    HEURISTICS,
    load_models,
    planner_overrides,
)
from oncoplan.planner.policy import POLICIES, PolicyChoice
from oncoplan.planner.search import SEARCHES, SETTINGS, SearchSettings, WorldModelPlanner
from oncoplan.runtime.bundles import shipped_bundles
from oncoplan.stats import bootstrap_ci, dice
from oncoplan.tace.actions import ACTION_BASE, TCIA_DRUGS, TCIA_EMBOLICS, Protocol
from oncoplan.tace.clinical import WEEKS_PER_MONTH

BUNDLES = shipped_bundles()
CLINICAL_MODES = ("cohort", "none")
PATHS = ("evaluation", "app")
PATH_TEXT = {
    "evaluation": "evaluation (the prepared model-space CT and its tumour mask)",
    "app": "app (`oncoplan plan` on each case's pre-treatment DICOM: the app's series choice, preprocessing, "
    "the assistant's segmentation, the shipped policy prior; clinical data as a clinical.json given with --clinical)",
}
# The evaluation path's tumour mask: the prepared label, or the assistant's segmentation of the prepared CT
# (the app's segmenter: the ablation that separates the mask from the app's own preprocessing of the DICOM).
MASKS = {"label": "the prepared label mask", "assistant": "the assistant's segmentation of the prepared CT"}
# What the world model reads of the lesion on the evaluation path: the scan (both phases, as the app), or an
# ablation: the arterial phase replaced by the portal-venous one (no phase contrast to read), or nothing.
LESION_READS = {
    "scan": "both phases of the pre-treatment scan, as the app",
    "arterial-as-portal-venous": "the arterial phase replaced by the portal-venous one (ablation)",
    "none": "nothing of the scan: the average lesion (ablation)",
}
PLAN_KEYS = ("method", "best", "pick", "separation", "evaluations", "timing_s", "steps", "skipped_candidates")
SEARCH_OF_METHOD = {"beam_search": "beam", "best_of_n": "best_of_n"}  # a Plan's method -> its search
METHODS = (
    "world_model",
    "policy_top1",
    "most_common",
    "random",
    "gold",
    "population_oracle",
    "image_informed_oracle",
    "oracle",
)
LABELS = {
    "world_model": "World-model planner (policy + dynamics + assistant + heuristic search)",
    "policy_top1": "Offline policy, top-1, no search",
    "most_common": "Most common protocol of the site",
    "random": "Random valid protocol (seeded)",
    "gold": "Physician (gold)",
    "population_oracle": "Population oracle (ground truth given the covariates only)",
    "image_informed_oracle": "Image-informed oracle (ground truth given the covariates and what the pre-treatment "
    "images show: a perfect reader)",
    "oracle": "Oracle (ground truth, same space)",
}
SET_METRICS = ("f1", "jaccard", "precision", "recall")
METRICS = (*SET_METRICS, "regret_weeks", "regret_months")
DIFF_METRICS = ("f1", "jaccard", "regret_weeks")
# The paper's planning table (MeWM, main text, F1 in %, real in-house HCC-TACE data): reference only.
PAPER_F1 = {"MeWM": 64.08, "GPT-4o": 44.29}
ACTION_SETS = ("site", "tcia", "full")
log = logging.getLogger(__name__)
TCIA_SET = TCIA_DRUGS + TCIA_EMBOLICS


# ---------------------------------------------------------------- metrics


def set_metrics(chosen: Protocol | Iterable[str], gold: Protocol | Iterable[str]) -> dict[str, float]:
    """Precision, recall, F1 and Jaccard of the chosen item set against the gold one.

    Two empty sets agree perfectly (1.0); one empty set scores 0 (precision of an empty choice is 0).
    """
    a = set(chosen.items if isinstance(chosen, Protocol) else chosen)
    b = set(gold.items if isinstance(gold, Protocol) else gold)
    if not a and not b:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "jaccard": 1.0}
    hit = len(a & b)
    return {
        "precision": hit / len(a) if a else 0.0,
        "recall": hit / len(b) if b else 0.0,
        "f1": 2 * hit / (len(a) + len(b)),
        "jaccard": hit / len(a | b),
    }


def most_common(protocols: Iterable[Protocol | str]) -> Protocol:
    """The most frequent protocol; ties go to the one first in action-base order."""
    counts = Counter(p if isinstance(p, Protocol) else Protocol.parse(p) for p in protocols)
    if not counts:
        raise InputError("no protocol to take the most common one from")
    return min(counts, key=lambda p: (-counts[p], p.base_order()))


def action_set_for(site: str, mode: str = "site") -> tuple[str, ...]:
    """The case's action set: ``site`` gives the HCC-TACE-Seg set for the internal (MD Anderson-like)
    site and the whole action base elsewhere; ``tcia`` and ``full`` force one."""
    if mode not in ACTION_SETS:
        raise InputError(f"unknown action set {mode!r}; choose {', '.join(ACTION_SETS)}")
    if mode == "tcia" or (mode == "site" and site == "internal"):
        return TCIA_SET
    return ACTION_BASE


# ---------------------------------------------------------------- cases


def _cohort_rows(cohort: Path) -> dict[str, dict[str, Any]]:
    import pandas as pd

    table = cohort / "cohort.csv"
    if not table.exists():
        raise InputError(f"{table}: cohort table not found")
    frame = pd.read_csv(table, dtype={"TCIA_ID": str}, keep_default_na=False)
    for column in ("TCIA_ID", "chemotherapy"):
        if column not in frame.columns:
            raise InputError(f"{table}: no column {column!r}")
    return {str(r["TCIA_ID"]): r for r in frame.to_dict("records")}


def ground_truth_patient(cohort: Path, case_id: str, row: Mapping[str, Any]):
    """The ground-truth patient of a synthetic case (its truth.json and its cohort.csv row)."""
    from oncoplan.training.synth import liver as L

    truth = cohort / case_id / "truth.json"
    if not truth.exists():
        raise InputError(f"{truth}: no ground truth (planning regret needs a synthetic cohort)")
    return L.patient_from_record(json.loads(truth.read_text()), dict(row))


def site_practice(
    train_cohort: Path | None,
) -> tuple[Callable[[str], Protocol], Callable[[str], Any]]:
    """(most common protocol of a site, practice prior of a site): from a training cohort's
    ``chemotherapy`` column (rows of the same site where it has a ``site`` column), else the
    synthetic practice table."""
    from oncoplan.planner.prior import PRACTICE, Prior

    if train_cohort is None:

        def common(site: str) -> Protocol:
            table = PRACTICE.get(site) or {k: v / len(PRACTICE) for t in PRACTICE.values() for k, v in t.items()}
            return Protocol.parse(max(table, key=lambda k: table[k]))

        def prior(site: str) -> Prior:
            return Prior.from_practice(site if site in PRACTICE else None)

        return common, prior
    rows = list(_cohort_rows(train_cohort).values())

    def protocols(site: str) -> list[Protocol]:
        same = [r for r in rows if str(r.get("site", "")) == site]
        return [Protocol.parse(str(r["chemotherapy"])) for r in (same or rows) if str(r["chemotherapy"]).strip()]

    return (
        lambda site: most_common(protocols(site)),
        lambda site: Prior.from_protocols(protocols(site), f"cohort:{train_cohort.name}:{site}"),
    )


# ---------------------------------------------------------------- the evaluation


def evaluate_planning(
    world_model: Any,
    scorer: Any,
    preprocessing: Callable,
    prepared: str | Path,
    cohort: str | Path | None = None,
    *,
    settings: SearchSettings = SETTINGS["cpu"],
    search: str = "auto",
    action_sets: str = "site",
    train_cohort: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
    policy: PolicyChoice | None = None,
    clinical: str = "cohort",
    app: Any = None,
    practice_prior: bool = False,
    segmenter: Any = None,
    lesion_read: str = "scan",
) -> dict[str, Any]:
    """Every method on every case (module doc); returns the report written by :func:`write_report`.
    `policy`: who proposes the candidates (offline by default; an LLM policy sees each case's
    de-identified observation built from its cohort row, text only, and falls back as in the app).
    `clinical`: ``cohort`` (the planner reads each case's covariates from cohort.csv) or ``none`` (CT only:
    every covariate takes the response model's training median, as the app without clinical data).
    `app`: an :class:`~oncoplan.training.planner.app_path.AppPath`: the app plans each case from its DICOM
    (``world_model``; `world_model`, `scorer` and `preprocessing` are then unused and may be None) and the
    policy's top-1 is the app's policy. `practice_prior`: True ranks the evaluation path's candidates by the
    case's site practice instead of the shipped pooled prior the app uses (an ablation). `segmenter`: a
    :class:`~oncoplan.planner.segmenter.StudySegmenter`: the evaluation path plans each prepared CT with the
    assistant's tumour mask instead of the prepared label (None: the label). `lesion_read`: what the world model
    reads of the lesion on the evaluation path (:data:`LESION_READS`; the ablations prove the image is used)."""
    if lesion_read not in LESION_READS:
        raise InputError(f"unknown lesion read {lesion_read!r}; choose {', '.join(LESION_READS)}")
    if clinical not in CLINICAL_MODES:
        raise InputError(f"unknown clinical mode {clinical!r}; choose {', '.join(CLINICAL_MODES)}")
    from tqdm import tqdm

    from oncoplan.planner.deid import build_observation
    from oncoplan.tace.world_model import window_around
    from oncoplan.training.synth import liver as L
    from oncoplan.training.tace.data import load_prepared
    from oncoplan.training.tace.dynamics_eval import case_features, model_space_case

    if search not in SEARCHES:
        raise InputError(f"unknown search {search!r}; choose {', '.join(SEARCHES)}")
    settings = replace(settings, search=search)
    prepared = Path(prepared)
    entries = load_prepared(prepared)
    entries = entries[:limit] if limit else entries
    if not entries:
        raise InputError(f"{prepared}: no case to evaluate")
    if cohort is None:
        cohort = json.loads((prepared / "datalist.json").read_text()).get("cohort")
        if not cohort:
            raise InputError(f"{prepared}: the datalist names no cohort; give --cohort")
    cohort = Path(cohort)
    rows = _cohort_rows(cohort)
    common, prior = site_practice(Path(train_cohort) if train_cohort else None)
    planners: dict[tuple[tuple[str, ...], str], WorldModelPlanner] = {}

    def planner_for(action_set: tuple[str, ...], site: str) -> WorldModelPlanner:
        key = (action_set, site)
        if key not in planners:
            chosen = policy or PolicyChoice()
            # None: the shipped pooled prior, as the app; the site's practice only when told (an ablation).
            site_prior = prior(site) if app is None and practice_prior else None
            built = chosen.build(action_set, site_prior, settings.drug_horizon, settings.embolic_horizon)
            # The app path: this planner only defines the space and the policy's top-1; the app searches.
            world = SimpleNamespace() if app is not None else world_model
            planners[key] = WorldModelPlanner(world, scorer, built, settings)
        return planners[key]

    cases = []
    for index, entry in enumerate(tqdm(entries, desc="planning", unit="case", disable=not progress)):
        case_id = str(entry["case_id"])
        if case_id not in rows:
            raise InputError(f"{cohort / 'cohort.csv'}: no row for case {case_id}")
        row = rows[case_id]
        patient = ground_truth_patient(cohort, case_id, row)
        site = str(row.get("site", "") or "internal")
        gold = Protocol.parse(str(row["chemotherapy"]))
        action_set = action_set_for(site, action_sets)
        planner = planner_for(action_set, site)
        space = planner.space()
        oracle = L.oracle_protocol(patient, space)
        seen = row if clinical == "cohort" else {}  # what the planner knows of the patient besides the CT
        observation = None if policy is None or policy.kind == "offline" else build_observation(seen)
        if app is not None:
            app_plan = app.plan(cohort, case_id, row, action_set)
            best = Protocol.parse(app_plan["best"]["protocol"])
            plan_record = {k: app_plan.get(k) for k in PLAN_KEYS}
            plan_record["top"] = (app_plan.get("ranked") or [])[:5]
            plan_record["app"] = app_plan["app"]
        else:
            pre, mask, _ = model_space_case(preprocessing, entry)
            mask_record = mask_source(segmenter, entry, mask, world_model)
            mask = mask_record.pop("mask")
            pre_window, mask_window, _ = window_around(pre, mask, tuple(world_model.window))
            features = None
            if lesion_read != "none":
                ablated = {**entry, "pre_arterial_image": entry.get("pre_image")}
                read = ablated if lesion_read == "arterial-as-portal-venous" else entry
                features = case_features(preprocessing, read, pre, mask)
            plan = planner.search(pre_window, mask_window, observation, clinical=seen, features=features)
            best = plan.best.protocol
            plan_record = {
                "lesion_features": None
                if features is None
                else [None if math.isnan(v) else round(float(v), 4) for v in features],
                "method": plan.method,
                "best": plan.best.to_dict(),
                "pick": plan.pick,
                "separation": plan.separation,
                "top": [r.to_dict() for r in plan.ranked[:5]],
                "evaluations": plan.evaluations,
                "timing_s": plan.timing_s,
                "steps": plan.steps,
                "skipped_candidates": plan.skipped_candidates,
                "mask": mask_record,
            }
        rng = np.random.default_rng([seed, index])
        chosen = {
            "world_model": best,
            "policy_top1": planner.initial_candidates(observation)[0][0],
            "most_common": common(site),
            "random": space[int(rng.integers(len(space)))],
            "gold": gold,
            "population_oracle": L.population_protocol(patient, space),
            "image_informed_oracle": L.image_informed_protocol(patient, space),
            "oracle": oracle,
        }
        in_space = set(space)
        results = {}
        for method, protocol in chosen.items():
            regret = L.regret_weeks(patient, protocol, space)
            results[method] = {
                "protocol": str(protocol),
                **set_metrics(protocol, gold),
                "regret_weeks": regret,
                "regret_months": regret / WEEKS_PER_MONTH,
                "expected_os_weeks": L.outcome(patient, protocol).expected_os_weeks,
                "in_space": protocol in in_space,
            }
        cases.append(
            {
                "case_id": case_id,
                "site": site,
                "action_set": list(action_set),
                "space_size": len(space),
                "gold": str(gold),
                "oracle": str(oracle),
                "methods": results,
                "policy_fallback": (
                    (app_plan.get("policy") or {}).get("fallback")
                    if app is not None
                    else getattr(planner.policy, "last_fallback_reason", None)
                ),
                "plan": plan_record,
            }
        )
    # The search that ran ("auto" resolves by the heuristic and the policy), as the plans record it.
    methods = {SEARCH_OF_METHOD.get(str(c["plan"].get("method")), search) for c in cases}
    ran = methods.pop() if len(methods) == 1 else "+".join(sorted(methods))
    report = summarise(cases, settings, ran, action_sets, prepared, cohort, train_cohort, n_bootstrap, seed)
    chosen = policy.to_dict() if policy is not None else {"kind": "offline", "label": "offline"}
    chosen["fallbacks"] = sum(1 for c in cases if c["policy_fallback"])
    heuristic = getattr(scorer, "name", type(scorer).__name__)
    if app is not None:
        heuristic = "the app's default"
    path = "app" if app is not None else "evaluation"
    report = {**report, "heuristic": heuristic, "policy": chosen, "clinical": clinical, "path": path}
    mask = None if app is not None else ("assistant" if segmenter is not None else "label")
    kept = sum(1 for c in cases if c["plan"].get("mask", {}).get("source") != "assistant")
    report = {**report, "practice_prior": practice_prior and app is None, "mask": mask}
    report["lesion_read"] = None if app is not None else lesion_read
    report["generator"] = cohort_generator(cohort)
    return {**report, "mask_fallbacks": kept} if segmenter is not None else report


def mask_source(segmenter: Any, entry: Mapping[str, Any], label: np.ndarray, world_model: Any) -> dict[str, Any]:
    """The tumour mask the evaluation path plans with ({"mask": array, "source": ..., "tumor_voxels": ...}): the
    prepared label, or (with a segmenter) the assistant's tumour labels on the same model-space grid. A case
    where the assistant finds no tumour (the app refuses such a study) keeps its label mask, recorded."""
    if segmenter is None:
        return {"mask": label, "source": "label", "tumor_voxels": int(label.sum())}
    from oncoplan.tace.labels import TUMOR_LABELS

    _, labels, _ = segmenter.segment(entry["pre_image"], world_model.device)
    if labels.shape != label.shape:
        raise InputError(f"{entry['pre_image']}: the assistant's grid {labels.shape} is not the model's {label.shape}")
    tumor = np.isin(labels, TUMOR_LABELS)
    if not tumor.any():
        log.warning("case %s: the assistant finds no tumour; planned with the label mask", entry["case_id"])
        return {"mask": label, "source": "label (the assistant found no tumour)", "tumor_voxels": int(label.sum())}
    return {"mask": tumor, "source": "assistant", "tumor_voxels": int(tumor.sum()), "dice_vs_label": dice(tumor, label)}


def cohort_generator(cohort: Path) -> str:
    """The generator version of a raw cohort (cohort.json; cohorts written before it was recorded: liver-1)."""
    meta = Path(cohort) / "cohort.json"
    return str(json.loads(meta.read_text()).get("generator", "liver-1")) if meta.is_file() else "liver-1"


def summarise(
    cases: Sequence[Mapping[str, Any]],
    settings: SearchSettings,
    search: str,
    action_sets: str,
    prepared: Path,
    cohort: Path,
    train_cohort: str | Path | None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Means with bootstrap CIs per method, paired differences planner - baseline, cost per model."""

    def values(method: str, metric: str) -> list[float]:
        return [float(c["methods"][method][metric]) for c in cases]

    # Every method the cases hold (reports written before 2026-12-07 have no image-informed oracle).
    present = [m for m in METHODS if all(m in c["methods"] for c in cases)]
    methods = {}
    for method in present:
        methods[method] = {
            "label": LABELS[method],
            **{m: list(bootstrap_ci(values(method, m), n_bootstrap, seed=seed)) for m in METRICS},
            "exact_gold": sum(c["methods"][method]["protocol"] == c["gold"] for c in cases),
            "exact_oracle": sum(c["methods"][method]["protocol"] == c["oracle"] for c in cases),
            "in_space": sum(bool(c["methods"][method]["in_space"]) for c in cases),
        }
    paired = {}
    for method in present[1:]:
        paired[method] = {
            m: list(
                bootstrap_ci(list(np.subtract(values("world_model", m), values(method, m))), n_bootstrap, seed=seed)
            )
            for m in DIFF_METRICS
        }
    timing_keys = sorted({k for c in cases for k in c["plan"]["timing_s"]})
    personalisation = None
    if {"population_oracle", "image_informed_oracle"} <= set(present):
        population, image, planner_regret = (
            np.asarray(values(m, "regret_months"))
            for m in ("population_oracle", "image_informed_oracle", "world_model")
        )
        # Issue 34's target: the planner captures at least half of what reading the images can gain over the
        # covariates alone: (population - planner) >= 0.5 (population - image-informed), in months.
        gain = float(np.mean(population - image))
        personalisation = {
            "achievable_months": list(bootstrap_ci(list(population - image), n_bootstrap, seed=seed)),
            "captured_months": list(bootstrap_ci(list(population - planner_regret), n_bootstrap, seed=seed)),
            "captured_share": float(np.mean(population - planner_regret)) / gain if gain > 0 else None,
        }
    eval_keys = sorted({k for c in cases for k in c["plan"]["evaluations"]})
    cost = {
        "timing_s_total": {k: round(sum(c["plan"]["timing_s"].get(k, 0.0) for c in cases), 3) for k in timing_keys},
        "timing_s_per_case": {
            k: round(float(np.mean([c["plan"]["timing_s"].get(k, 0.0) for c in cases])), 3) for k in timing_keys
        },
        "evaluations_per_case": {
            k: round(float(np.mean([c["plan"]["evaluations"].get(k, 0) for c in cases])), 2) for k in eval_keys
        },
    }
    return {
        "synthetic": True,
        "research_use_only": True,
        "n_cases": len(cases),
        "prepared": str(prepared),
        "cohort": str(cohort),
        "train_cohort": str(train_cohort) if train_cohort else None,
        "search": search,
        "action_sets": action_sets,
        "settings": asdict(settings),
        "n_bootstrap": n_bootstrap,
        "metrics_note": "set metrics are fractions (the .md shows percent); regret is oracle minus chosen "
        "expected OS under the ground truth, the oracle searched over the planner's valid space",
        "paper_reference_f1": PAPER_F1,
        "methods": methods,
        "paired_world_model_minus": paired,
        **({"personalisation": personalisation} if personalisation else {}),
        "cost": cost,
        "cases": list(cases),
    }


def _ci(v: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    if not all(math.isfinite(x) for x in v):
        return "n/a"
    return f"{v[0] * scale:.{digits}f} [{v[1] * scale:.{digits}f}, {v[2] * scale:.{digits}f}]"


def markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    n = report["n_cases"]
    search = (
        f"beam search (B={s['beam']}, T={s['samples']}, drug/embolic horizon {s['drug_horizon']}/"
        f"{s['embolic_horizon']}, {s['steps']} DDIM steps)"
        if report["search"] == "beam"
        else f"best-of-N over every valid protocol (T={s['samples']}, {s['steps']} DDIM steps)"
        if report["search"] == "best_of_n"
        else f"search {report['search']}"
    )
    if s.get("defer_alpha") is not None:
        search += f", deferring to the policy's candidate when the top protocols' ANOVA p >= {s['defer_alpha']}"
    if report.get("bundle_overrides"):
        search += ", bundle overrides " + json.dumps({k: v for k, v in report["bundle_overrides"].items() if v})
    chosen = report.get("policy") or {"label": "offline", "fallbacks": 0}
    # Reports written before the default changed (2026-12-07) planned the evaluation path with the prior.
    evaluation = report.get("path", "evaluation") == "evaluation"
    prior = ", with the site's practice prior" if evaluation and report.get("practice_prior", True) else ""
    prior += f", {MASKS[report.get('mask') or 'label']}" if evaluation else ""
    prior += f"; the world model read {LESION_READS[report['lesion_read']]}" if report.get("lesion_read") else ""
    if report.get("mask_fallbacks"):
        prior += f" ({report['mask_fallbacks']} case(s) kept the label: the assistant found no tumour)"
    policy = chosen["label"] + (f" ({chosen['fallbacks']} case(s) fell back to offline)" if chosen["fallbacks"] else "")
    lines = [
        "# TACE planning evaluation - SYNTHETIC cohort",
        "",
        "**SYNTHETIC DATA. Research use only; not a medical device.** Gold = the synthetic physician's "
        "protocol (imperfect practice); regret = expected OS lost against the ground-truth oracle.",
        "",
        f"{n} held-out cases from `{report['prepared']}` (cohort `{report['cohort']}`, generator "
        f"{report.get('generator', 'liver-1')}); planner: {policy} "
        f"policy + world model, {search}, heuristic {report.get('heuristic', 'survival_network')}; "
        f"action sets: {report['action_sets']}; clinical covariates: "
        f"{'cohort.csv' if report.get('clinical', 'cohort') == 'cohort' else 'none (CT only, training medians)'}; "
        f"path: {PATH_TEXT[report.get('path', 'evaluation')]}{prior}. "
        "Mean over cases "
        f"[percentile bootstrap 95% CI, {report['n_bootstrap']} resamples]; set metrics in %.",
        "",
        "| Method | F1 (%) | Jaccard (%) | Precision (%) | Recall (%) | Regret (weeks) | Regret (months) "
        "| = gold | = oracle | in space |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["methods"].values():
        lines.append(
            f"| {m['label']} | {_ci(m['f1'], 100)} | {_ci(m['jaccard'], 100)} | {_ci(m['precision'], 100)} | "
            f"{_ci(m['recall'], 100)} | {_ci(m['regret_weeks'])} | {_ci(m['regret_months'])} | "
            f"{m['exact_gold']}/{n} | {m['exact_oracle']}/{n} | {m['in_space']}/{n} |"
        )
    lines += [
        "",
        "Paired differences, world-model planner minus each method (bootstrap over cases; "
        "F1/Jaccard up is better, regret down is better):",
        "",
        "| Baseline | dF1 (points) | dJaccard (points) | dRegret (weeks) |",
        "|---|---|---|---|",
    ]
    for method, d in report["paired_world_model_minus"].items():
        lines.append(
            f"| {report['methods'][method]['label']} | {_ci(d['f1'], 100)} | {_ci(d['jaccard'], 100)} | "
            f"{_ci(d['regret_weeks'])} |"
        )
    if "personalisation" in report:
        pers = report["personalisation"]
        share = pers["captured_share"]
        lines += [
            "",
            "Personalisation, months: achievable by reading the images (population oracle minus image-informed "
            f"oracle) {_ci(pers['achievable_months'])}; captured by the planner (population oracle minus planner) "
            f"{_ci(pers['captured_months'])}; share captured "
            f"{'n/a (nothing to gain)' if share is None else f'{share:.2f}'} (target >= 0.5).",
        ]
    cost = report["cost"]
    per_case = ", ".join(f"{k} {v:.2f} s" for k, v in cost["timing_s_per_case"].items())
    evals = ", ".join(f"{k} {v:g}" for k, v in cost["evaluations_per_case"].items())
    ref = ", ".join(f"{k} {v:.2f}" for k, v in report["paper_reference_f1"].items())
    lines += [
        "",
        f"Cost per case (mean): {per_case}. Model evaluations per case (mean): {evals}.",
        "",
        f"For reference only, the MeWM paper's planning table (real in-house HCC-TACE data, F1 %): {ref}. "
        "Not comparable: these numbers are on synthetic cases.",
        "",
        "Regret is measured against the oracle of the planner's own space (conflict-free, at most "
        f"{s['drug_horizon']} drugs and {s['embolic_horizon']} embolics of the case's action set); a "
        "protocol outside it (e.g. a three-drug practice regimen) can do better than that oracle, so its "
        "regret can be negative ('in space' counts the cases inside).",
        "",
    ]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """planning_evaluation.json and .md in `out`, each written whole or not at all."""
    from oncoplan.fsio import atomic_path

    out = Path(out)
    js, md = out / "planning_evaluation.json", out / "planning_evaluation.md"
    text = json.dumps(report, indent=1, allow_nan=True)
    page = markdown(report)
    with atomic_path(js) as tmp_js, atomic_path(md) as tmp_md:
        tmp_js.write_text(text)
        tmp_md.write_text(page)
    return js, md


# ---------------------------------------------------------------- models from bundles


def add_overrides_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """`--<name>-overrides` options (a JSON object of inference-config overrides per bundle)."""
    for name in names:
        parser.add_argument(f"--{name}-overrides", help=f"JSON object of {name} inference-config overrides")


def overrides_from(args: argparse.Namespace, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The parsed `--<name>-overrides` of `add_overrides_arguments`, per bundle name."""
    return {name: parse_overrides(getattr(args, f"{name}_overrides"), name) for name in names}


def parse_overrides(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    return json_object(text, f"--{what}-overrides is not JSON", f"--{what}-overrides must be a JSON object")


def main(argv: Sequence[str] | None = None, prog: str = "python -m oncoplan.training.planner.evaluate") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True, help="prepared held-out cohort (datalist.json)")
    parser.add_argument(
        "--cohort", type=Path, help="raw synthetic cohort (cohort.csv, truth.json); default: datalist's"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for planning_evaluation.json/.md")
    parser.add_argument("--dynamics", type=Path, default=BUNDLES / "tace_dynamics", help="dynamics bundle")
    parser.add_argument("--assistant", type=Path, default=BUNDLES / "tace_assistant", help="assistant bundle")
    parser.add_argument("--survival", type=Path, default=BUNDLES / "tace_survival", help="survival bundle")
    add_overrides_arguments(parser, ("dynamics", "assistant", "survival"))
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="cpu", help="search size (cpu or paper)")
    parser.add_argument(
        "--search", choices=SEARCHES, default="auto", help="auto: every protocol for a layout read-out, else beam"
    )
    parser.add_argument("--heuristic", choices=HEURISTICS, default=DEFAULT_HEURISTIC, help="the planner's risk score")
    parser.add_argument("--action-set", choices=ACTION_SETS, default="site", help="site: HCC-TACE-Seg set for internal")
    parser.add_argument(
        "--train-cohort", type=Path, help="training cohort for the most-common protocol (and --practice-prior site)"
    )
    parser.add_argument("--samples", type=int, help="override T (simulated outcomes per protocol)")
    parser.add_argument("--steps", type=int, help="override the DDIM steps")
    parser.add_argument("--beam", type=int, help="override B")
    defer = parser.add_mutually_exclusive_group()
    defer.add_argument(
        "--defer-alpha",
        type=float,
        help="recommend the policy's candidate when the top protocols' ANOVA p >= this (default: off)",
    )
    defer.add_argument("--no-defer", action="store_true", help="always recommend the world model's pick")
    parser.add_argument("--limit", type=int, help="first N cases only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        help="who proposes the candidates: offline (default; $ONCOPLAN_POLICY) | openai (needs --allow-send) | "
        "transformers (--llm-model DIR), as `oncoplan plan --policy`",
    )
    parser.add_argument("--allow-send", action="store_true", help="opt in to sending de-identified cases (openai)")
    parser.add_argument("--llm-model", help="openai: the model name; transformers: the model folder")
    parser.add_argument("--llm-base-url", help="openai: the endpoint's base URL")
    parser.add_argument(
        "--clinical",
        choices=CLINICAL_MODES,
        default="cohort",
        help="cohort: the planner reads each case's covariates (cohort.csv; --path app: as a clinical.json written "
        "for the case and given with --clinical); none: CT only, training medians",
    )
    parser.add_argument(
        "--path",
        choices=PATHS,
        default="evaluation",
        help="evaluation (default): plan the prepared model-space CT with its label mask (--mask); "
        "app: run `oncoplan plan` on each case's pre-treatment DICOM (COHORT/<case>/dicom/pre), as users do: the "
        "app's series choice, preprocessing, the assistant's segmentation, its policy (the shipped prior), its "
        "default heuristic; its outputs under OUT/app/<case>/",
    )
    parser.add_argument(
        "--practice-prior",
        choices=("site", "none"),
        default="none",
        help="--path evaluation: none (default): the offline policy ranks by the shipped pooled prior, as the app; "
        "site: by the case's site practice (an ablation)",
    )
    parser.add_argument(
        "--mask",
        choices=tuple(MASKS),
        default="label",
        help="--path evaluation: plan with the prepared label mask (default) or the assistant's segmentation of "
        "the prepared CT (the app's segmenter; separates the mask from the app's preprocessing of the DICOM)",
    )
    parser.add_argument(
        "--lesion-read",
        choices=tuple(LESION_READS),
        default="scan",
        help="--path evaluation: what the world model reads of the lesion: scan (default: both phases, as the app); "
        "arterial-as-portal-venous or none: ablations that take the phase information away",
    )
    parser.add_argument(
        "--models",
        type=Path,
        help="--path app: the MODELS folder `oncoplan plan -m` takes (default: --dynamics/--assistant/--survival, "
        "which default to the shipped bundles)",
    )
    args = parser.parse_args(argv)
    try:
        policy = PolicyChoice.resolve(
            args.policy, allow_send=args.allow_send, model=args.llm_model, base_url=args.llm_base_url
        )
        settings = SETTINGS[args.settings]
        names = ("samples", "steps", "beam", "defer_alpha")
        changes = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        if args.no_defer:
            changes["defer_alpha"] = None
        settings = replace(settings, seed=args.seed, **changes)
        given = overrides_from(args, ("dynamics", "assistant", "survival"))
        if args.path == "app":
            report = evaluate_through_app(args, policy, settings, changes, given)
            js, md = write_report(report, args.out)
            if not args.quiet:
                print(md.read_text())
            print(f"wrote {js} and {md}")
            return 0
        # The planner's defaults under --*-overrides, once: what the world model runs with and the report records.
        paths = {"dynamics": args.dynamics, "assistant": args.assistant, "survival": args.survival}
        overrides = {k: planner_overrides(k, given.get(k), path=p) for k, p in paths.items()}
        world, scorer, preprocessing = load_models(
            args.dynamics,
            args.assistant,
            args.survival,
            overrides,
            settings,
            heuristic=args.heuristic,
            planner_defaults=False,
        )
        segmenter = None
        if args.mask == "assistant":
            from oncoplan.planner.segmenter import StudySegmenter

            # The forward looked up per call, as the app does (a backend or a timer may replace it).
            forward = lambda x: world.assistant_forward(x)  # noqa: E731
            segmenter = StudySegmenter(args.assistant, forward, settings.seg_overlap, overrides["assistant"])
        report = evaluate_planning(
            world,
            scorer,
            preprocessing,
            args.prepared,
            args.cohort,
            practice_prior=args.practice_prior == "site",
            segmenter=segmenter,
            lesion_read=args.lesion_read,
            **common_arguments(args, settings, policy),
        )
        report["bundle_overrides"] = overrides
        js, md = write_report(report, args.out)
    except (InputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


def common_arguments(args: argparse.Namespace, settings: SearchSettings, policy: PolicyChoice) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_planning` that both paths take from the command line."""
    return {
        "settings": settings,
        "search": args.search,
        "action_sets": args.action_set,
        "train_cohort": args.train_cohort,
        "limit": args.limit,
        "seed": args.seed,
        "n_bootstrap": args.n_bootstrap,
        "progress": not args.quiet,
        "policy": policy,
        "clinical": args.clinical,
    }


def evaluate_through_app(
    args: argparse.Namespace,
    policy: PolicyChoice,
    settings: SearchSettings,
    changes: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """`--path app`: every case planned by `oncoplan plan` (:mod:`.app_path`); options the app does not
    take are refused (one line)."""
    from oncoplan.training.planner.app_path import AppPath

    refused = [f"--{k}-overrides" for k, v in overrides.items() if v]
    refused += [f"--practice-prior {args.practice_prior}"] if args.practice_prior != "none" else []
    refused += [f"--mask {args.mask}"] if args.mask != "label" else []
    refused += [f"--lesion-read {args.lesion_read}"] if args.lesion_read != "scan" else []
    refused += [f"--search {args.search}"] if args.search != "auto" else []
    refused += [f"--heuristic {args.heuristic}"] if args.heuristic != DEFAULT_HEURISTIC else []
    if refused:
        raise InputError(f"--path app plans as the app does, which takes no {', '.join(refused)}")
    models = args.models
    paths = {"tace_dynamics": args.dynamics, "tace_assistant": args.assistant, "tace_survival": args.survival}
    if models is None and any(Path(p).resolve() != (BUNDLES / n).resolve() for n, p in paths.items()):
        models = args.out / "app" / "models"  # the bundles given, under the names `oncoplan plan -m` looks for
        models.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            link = models / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(path).resolve(), target_is_directory=True)
    policy_args = ["--policy", policy.kind] if policy.kind != "offline" else []
    policy_args += ["--allow-send"] if policy.allow_send else []
    policy_args += ["--llm-model", args.llm_model] if args.llm_model else []
    policy_args += ["--llm-base-url", args.llm_base_url] if args.llm_base_url else []
    app_settings = {"base": args.settings, "seed": args.seed, **changes}
    app = AppPath(args.out, app_settings, models, policy_args, args.clinical)
    report = evaluate_planning(
        None, None, None, args.prepared, args.cohort, app=app, **common_arguments(args, settings, policy)
    )
    report["app_settings"] = app_settings
    report["app_models"] = str(models) if models is not None else "shipped"
    return report


if __name__ == "__main__":
    raise SystemExit(main())

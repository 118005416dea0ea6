"""TACE planning on the pre-treatment CT: the MeWM world-model search, and its result on the CT grid.

Every piece comes from the bundles and `oncoplan.training`; this module only strings them together:

1. the CT goes into model space with the assistant bundle's own preprocessing (its
   ``inference.json``: RAS, the bundles' voxel spacing, HU clip/scale; the loader is skipped);
2. the assistant segments liver and tumor (its inferer and its ``label_map`` without the inversion);
3. a window of the assistant's ROI is cut around the tumor (:func:`window_around`) and the planner
   searches (:class:`WorldModelPlanner`: the chosen policy (:class:`PolicyChoice`: offline by default,
   an OpenAI-compatible endpoint or a local model, which fall back to the offline one), dynamics +
   assistant world model, the planner's default heuristic: the survival bundle's response Cox model
   on the world model's predicted layout, with the patient's clinical covariates
   (:mod:`oncoplan.operators.clinical_data`) and the training medians for those not given, which the
   outputs name; ``cpu`` settings by default, ``paper`` for MeWM's B=5, T=5);
4. the top candidates are simulated again with the search's seed (the same noise, so the same
   outcomes) for the report, and the top protocol's simulated tumor (viable / necrosis / Lipiodol,
   the per-voxel majority over the T samples, inside the region the dynamics model regenerates) is
   resampled onto the input CT grid by physical position (nearest neighbour).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.errors import InputError
from oncoplan.operators.clinical_data import ClinicalReading
from oncoplan.operators.ct_volume import CTVolume, from_datasets, from_selected_series
from oncoplan.planner.policy import PolicyChoice
from oncoplan.runtime.grid import support_box

log = logging.getLogger(__name__)
SETTINGS_ENV = "ONCOPLAN_TACE_SETTINGS"
TOP_K = 3  # candidates shown in the report with their simulated outcome
NAMES = {"assistant": "tace_assistant", "dynamics": "tace_dynamics", "survival": "tace_survival"}


@dataclass(frozen=True)
class PlanSettings:
    """The search size and the action set the policy may choose from."""

    search: object  # oncoplan.planner.search.SearchSettings
    action_set: tuple[str, ...]
    label: str


def parse_settings(text: str | None = None) -> PlanSettings:
    """``cpu`` (default), ``paper`` (MeWM: B=5, T=5, 25 DDIM steps), or a JSON object of search fields
    over a base: ``{"base": "cpu", "beam": 2, "samples": 1, "steps": 2, "action_set": "tcia"}``.
    ``action_set`` is ``full`` (the whole action base, default) or ``tcia`` (the HCC-TACE-Seg set)."""
    from oncoplan.planner.search import SETTINGS, SearchSettings
    from oncoplan.tace.actions import ACTION_BASE, TCIA_DRUGS, TCIA_EMBOLICS

    text = (text or os.environ.get(SETTINGS_ENV) or "cpu").strip()
    if text in SETTINGS:
        return PlanSettings(SETTINGS[text], ACTION_BASE, text)
    try:
        fields = json.loads(text)
    except ValueError:
        raise InputError(f"settings {text!r}: give cpu, paper or a JSON object of search fields") from None
    if not isinstance(fields, dict):
        raise InputError(f"settings {text!r}: give cpu, paper or a JSON object of search fields")
    base = str(fields.pop("base", "cpu"))
    sets = {"full": ACTION_BASE, "tcia": TCIA_DRUGS + TCIA_EMBOLICS}
    action_set = str(fields.pop("action_set", "full"))
    if base not in SETTINGS or action_set not in sets:
        raise InputError(f"settings {text!r}: base is cpu or paper, action_set is full or tcia")
    unknown = sorted(set(fields) - set(SearchSettings.__dataclass_fields__))
    if unknown:
        raise InputError(f"settings {text!r}: unknown search fields {', '.join(unknown)}")
    try:
        search = replace(SETTINGS[base], **fields)
    except (TypeError, ValueError) as exc:
        raise InputError(f"settings {text!r}: {exc}") from None
    return PlanSettings(search, sets[action_set], f"{base}+{json.dumps(fields, sort_keys=True)}")


@dataclass
class SimulatedCandidate:
    """One of the top protocols with its simulated outcome in model space (mean CT, majority labels), for
    the outputs (not `oncoplan.planner.policy.Candidate`, a protocol the policy proposes)."""

    ranked: object  # oncoplan.planner.search.RankedProtocol
    post_window: np.ndarray
    post_labels: np.ndarray


def arterial_of(study_selected_series_list) -> CTVolume | None:
    """The arterial series the selector put beside the portal-venous one, as a volume; None where there is none."""
    from oncoplan.operators.series_selector import ARTERIAL

    if not study_selected_series_list:
        return None
    for selected in study_selected_series_list[0].selected_series[1:]:
        if selected.selection_name == ARTERIAL:
            datasets = [i.get_native_sop_instance() for i in selected.series.get_sop_instances()]
            number = datasets[0].get("SeriesNumber", "?") if datasets else "?"
            try:
                return from_datasets(datasets, f"arterial CT series {number}")
            except InputError as exc:  # the plan goes on from the portal-venous phase alone, and says so
                log.warning("%s; planning from the portal-venous phase alone", exc)
    return None


@dataclass
class TacePlan:
    """What the writers need: the search result, the CT, model-space windows and the tumor on the CT grid."""

    plan: object  # oncoplan.planner.search.Plan
    volume: CTVolume
    phase: str  # the selection that chose the series: PVP or AP
    settings: PlanSettings
    pre_window: np.ndarray  # scaled CT [-1, 1], RAS, model spacing
    mask_window: np.ndarray  # pre-treatment tumor (assistant)
    patch: tuple[slice, ...]  # the region of the window the dynamics model regenerates
    candidates: list[SimulatedCandidate]
    post_labels: np.ndarray  # (slice, row, column) on the CT: 0, 2 viable, 3 necrosis, 4 Lipiodol
    spacing_mm: tuple[float, ...]
    bundles: dict[str, str]  # bundle name -> version
    clinical: dict = field(default_factory=dict)  # clinical_record(): source, values, imputed, flags
    policy: dict = field(default_factory=dict)  # the policy chosen, the one that planned, any fallback
    timing_s: dict[str, float] = field(default_factory=dict)
    segmented_cm3: dict[str, float] = field(default_factory=dict)  # the assistant's liver (tumor in) and tumor
    model_timing_s: dict[str, float] = field(default_factory=dict)  # per network, over the whole plan
    # What the world model read of the lesion (oncoplan.tace.lesion_features.FEATURES; None: phase not read).
    lesion_features: dict[str, float | None] = field(default_factory=dict)

    @property
    def best(self):
        return self.plan.best

    @property
    def flags(self) -> list[dict]:
        """The guideline contraindications and cautions of the patient's clinical data."""
        return list(self.clinical.get("flags", []))

    @property
    def segmentation_warning(self) -> str | None:
        liver = self.segmented_cm3.get("liver")
        return None if liver is None else liver_volume_warning(liver)


# Whole-liver volumes of adults, tumor included: cirrhotic livers shrink towards the lower end, large
# HCCs and hepatomegaly reach the upper one. A segmentation outside says the CT does not hold the whole
# liver or the assistant went wrong (it finds a "liver" in a chest CT too): the plan is flagged.
ADULT_LIVER_CM3 = (700.0, 4000.0)


def liver_volume_warning(liver_cm3: float) -> str | None:
    lo, hi = ADULT_LIVER_CM3
    if lo <= liver_cm3 <= hi:
        return None
    return (
        f"the segmented liver measures {liver_cm3:.0f} cm3, outside the adult range {lo:.0f}-{hi:.0f} cm3: "
        "check that the CT holds the whole liver and that the segmentation is right before reading this plan"
    )


def check_bundles(bundles: dict[str, Path]) -> None:
    """Each of the three bundles has its inference config and the weights the planner loads (one line otherwise)."""
    from oncoplan.planner.models import planner_overrides
    from oncoplan.runtime.bundles import bundle_parser

    for role, path in bundles.items():
        ckpt = Path(bundle_parser(path, overrides=planner_overrides(role, path=path)).get_parsed_content("ckpt_path"))
        if not ckpt.is_file():
            raise InputError(f"{ckpt}: no weights for the {NAMES[role]} bundle; give -m MODELS with trained bundles")


def _majority(labels: np.ndarray) -> np.ndarray:
    """Per-voxel most frequent label over the first axis (ties to the lower label)."""
    counts = np.stack([(labels == k).sum(0) for k in range(int(labels.max()) + 1)])
    return counts.argmax(0).astype(np.uint8)


def onto_ct_grid(labels: np.ndarray, affine: np.ndarray, volume: CTVolume) -> np.ndarray:
    """A label map in model space (index -> RAS `affine`) on the CT's grid (slice, row, column), nearest neighbour."""
    shape = volume.hu.shape[::-1]  # (column, row, slice), the index order of volume.affine_ras()
    out = np.zeros(shape, dtype=np.uint8)
    found = np.argwhere(labels)
    if not len(found):
        return volume.from_index_order(out)
    to_ct = np.linalg.inv(volume.affine_ras()) @ np.asarray(affine, dtype=float)
    box = support_box(found.min(0), found.max(0), to_ct, shape, reach=0.5)
    if box is None:
        return volume.from_index_order(out)
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
    back = np.linalg.inv(to_ct)
    index = np.rint(grid @ back[:3, :3].T + back[:3, 3]).astype(int)
    inside = np.all((index >= 0) & (index < labels.shape), axis=-1)
    values = np.zeros(grid.shape[:3], dtype=np.uint8)
    values[inside] = labels[tuple(index[inside].T)]
    out[box] = values
    return volume.from_index_order(out)


def _paste(window: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`window` placed at `start` (may be negative) in a zero volume of `shape`, clipped to it."""
    out = np.zeros(shape, dtype=window.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(window.shape), shape)
    if np.any(hi <= lo):
        return out
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = window[
        tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    ]
    return out


class TacePlanner:
    """The three bundles loaded once (on CUDA if present, else the CPU); :meth:`plan` runs one CT."""

    def __init__(self, bundles: dict[str, Path], settings: PlanSettings, policy: PolicyChoice | None = None) -> None:
        from oncoplan.planner.models import load_models
        from oncoplan.planner.segmenter import StudySegmenter
        from oncoplan.runtime.backends import cache_dir

        self.bundles, self.settings = {k: Path(v) for k, v in bundles.items()}, settings
        self.choice = policy or PolicyChoice()
        s = settings.search
        self.policy = self.choice.build(settings.action_set, None, s.drug_horizon, s.embolic_horizon)
        self.world, self.scorer, _ = load_models(
            self.bundles["dynamics"], self.bundles["assistant"], self.bundles["survival"], None, settings.search
        )
        # The fastest backend here for the dynamics UNet (every DDIM step of every candidate) and the
        # assistant (the study's sliding windows and every simulated window): one export each.
        self.backends = self.world.accelerate(cache_dir())
        log.info("world model on %s; backends: %s", self.world.device, self.backends)
        # The forward is looked up per call: it is the world model's accelerated assistant.
        forward = lambda x: self.world.assistant_forward(x)  # noqa: E731
        self.segmenter = StudySegmenter(self.bundles["assistant"], forward, settings.search.seg_overlap)
        self.spacing = self.segmenter.spacing
        self.versions = {NAMES[r]: _version(p) for r, p in self.bundles.items()}

    def segment(self, volume: CTVolume):
        """(scaled CT (X, Y, Z), labels (X, Y, Z), index -> RAS affine) in model space."""
        return self.segmenter.segment(volume.metatensor(), self.world.device)

    def plan(
        self,
        volume: CTVolume,
        phase: str,
        clinical: ClinicalReading | None = None,
        arterial: CTVolume | None = None,
    ) -> TacePlan:
        """The plan of one CT (and the arterial phase beside a portal-venous one, which the world model
        reads with it), with the time each network took over all of it (the study's segmentation, the
        search, the outcomes of the top candidates), on whichever backend ran it."""
        from oncoplan.planner.search import ForwardTimer

        with ForwardTimer(self.world, "dynamics") as dynamics, ForwardTimer(self.world, "assistant") as assistant:
            plan = self._plan(volume, phase, clinical, arterial)
        plan.model_timing_s = {"dynamics": dynamics.seconds, "assistant": assistant.seconds}
        return plan

    def observation(self, volume: CTVolume, row: dict, clinical: ClinicalReading | None, tumor_on_ct: np.ndarray):
        """The de-identified observation an LLM policy sees (None for the offline policy: nothing built)."""
        if self.choice.kind == "offline":
            return None
        from oncoplan.planner.deid import build_observation

        # The source's identifier columns go in only so that the guard refuses them in a request.
        identified = {**row, **(clinical.identifiers if clinical is not None else {})}
        return build_observation(identified, list(volume.datasets), tumor_on_ct)

    def lesion_features(self, volume: CTVolume, phase: str, arterial: CTVolume | None, pre, mask):
        """What the study shows of the lesion (`oncoplan.tace.lesion_features`), on the whole model-space volume
        as the response head was fitted: the planning series and, beside a portal-venous one, the arterial phase
        on its grid (by position; one frame of reference)."""
        from oncoplan.operators.ct_volume import on_grid_of
        from oncoplan.tace.lesion_features import study_features

        scaled = None
        if arterial is not None and phase == "PVP":
            scaled = np.asarray(self.segmenter.scale(on_grid_of(arterial, volume).metatensor())[0], dtype=np.float32)
            if scaled.shape != mask.shape:  # cannot happen on one grid; said rather than read wrongly
                log.warning(
                    "arterial phase not read: model-space grid %s, not the planning series' %s",
                    scaled.shape,
                    mask.shape,
                )
                scaled = None
        features = study_features(pre, mask, phase, scaled)
        read = [name for name, value in zip(("arterial", "portal-venous"), features[:2], strict=True) if value == value]
        log.info("lesion read from the %s phase%s", " and ".join(read) or "no", "s" if len(read) > 1 else "")
        return features

    def _plan(
        self, volume: CTVolume, phase: str, clinical: ClinicalReading | None = None, arterial: CTVolume | None = None
    ) -> TacePlan:
        from oncoplan.planner.search import WorldModelPlanner
        from oncoplan.tace.labels import TUMOR_LABELS
        from oncoplan.tace.lesion_features import FEATURES
        from oncoplan.tace.world_model import window_around

        s = self.settings.search
        t0 = time.perf_counter()
        pre, labels, affine = self.segment(volume)
        mask = np.isin(labels, TUMOR_LABELS)
        if not mask.any():
            raise InputError(f"{volume.where}: the assistant model finds no liver tumor; there is nothing to plan")
        voxel_cm3 = float(np.prod(self.spacing)) / 1000.0
        segmented = {"liver": float((labels > 0).sum()) * voxel_cm3, "tumor": float(mask.sum()) * voxel_cm3}
        if (warning := liver_volume_warning(segmented["liver"])) is not None:
            log.warning("%s: %s", volume.where, warning)
        t1 = time.perf_counter()
        log.info("segmented: liver %.0f cm3, tumor %.1f cm3 (%.1f s)", segmented["liver"], segmented["tumor"], t1 - t0)
        pre_window, mask_window, start = window_around(pre, mask, tuple(self.world.window))
        features = self.lesion_features(volume, phase, arterial, pre, mask)
        row = clinical.data.row() if clinical is not None else {}
        tumor_on_ct = onto_ct_grid(mask.astype(np.uint8), affine, volume) if self.choice.kind != "offline" else None
        observation = self.observation(volume, row, clinical, tumor_on_ct)
        planner = WorldModelPlanner(self.world, self.scorer, self.policy, s)
        plan = planner.search(pre_window, mask_window, observation, clinical=row, features=features)
        policy = self.policy_record()
        t2 = time.perf_counter()
        log.info("searched: %d protocols simulated and scored (%.1f s)", len(plan.ranked), t2 - t1)
        top = [plan.best, *[r for r in plan.ranked if r is not plan.best]][:TOP_K]  # the recommendation first
        protocols = np.asarray([r.protocol.multi_hot() for r in top], dtype=np.float32)
        sim = self.world.simulate(pre_window, mask_window, protocols, s.seed, features=features)  # the search's noise
        candidates = [
            SimulatedCandidate(r, sim.windows[i].mean(0), _majority(sim.labels[i])) for i, r in enumerate(top)
        ]
        region = np.zeros(pre_window.shape, dtype=bool)
        region[sim.patch_slices] = True
        top_labels = candidates[0].post_labels
        simulated = np.where(region & np.isin(top_labels, TUMOR_LABELS), top_labels, 0).astype(np.uint8)
        on_ct = onto_ct_grid(_paste(simulated, np.asarray(start), pre.shape), affine, volume)
        t3 = time.perf_counter()
        best = plan.best
        log.info("TACE plan: %s (mean risk %.4f) of %d protocols", best.protocol, best.mean_risk, len(plan.ranked))
        return TacePlan(
            plan=plan,
            volume=volume,
            phase=phase,
            lesion_features={
                k: (None if v != v else round(float(v), 4)) for k, v in zip(FEATURES, features, strict=True)
            },
            settings=self.settings,
            pre_window=pre_window,
            mask_window=mask_window,
            patch=sim.patch_slices,
            candidates=candidates,
            post_labels=on_ct,
            spacing_mm=self.spacing,
            bundles=self.versions,
            clinical=clinical_record(clinical, self.scorer, row),
            policy=policy,
            timing_s={"segmentation": t1 - t0, "search": t2 - t1, "outcomes": t3 - t2},
            segmented_cm3=segmented,
        )

    def policy_record(self) -> dict:
        """The policy chosen, the one that proposed this plan's candidates, and why it fell back (if it did)."""
        fallback = getattr(self.policy, "last_fallback_reason", None)
        if fallback:
            log.warning("policy %s fell back to the offline policy", self.choice.label())  # the reason is in plan.json
        return {
            **self.choice.to_dict(),
            "planned_by": "offline" if fallback or self.choice.kind == "offline" else self.choice.label(),
            "fallback": fallback,
        }


def clinical_record(clinical: ClinicalReading | None, scorer, row: dict) -> dict:
    """What the outputs say of the clinical data: its source, the fields given, Child-Pugh and how it is
    known, the covariates the risk model used (each given or imputed with the training median), the keys
    that named no field, and the guideline flags."""
    from oncoplan.tace.patient import ClinicalData

    data = clinical.data if clinical is not None else ClinicalData()
    cls, how = data.child_pugh_class()
    model = getattr(scorer, "model", None)  # the response Cox model; the survival network reads no covariates
    used = model.covariates_used(row) if model is not None and hasattr(model, "covariates_used") else {}
    imputed = [v["field"] for v in used.values() if v["imputed"]]
    return {
        "source": clinical.source if clinical is not None else "none",
        "given": data.given(),
        "child_pugh": {"class": cls, "how": how, "score": data.child_pugh_points()},
        "model_covariates": used,
        "imputed": imputed,
        "imputed_note": (
            "planned with the training median for " + ", ".join(imputed) if imputed else "no covariate imputed"
        )
        if used
        else "the heuristic reads no clinical covariate",
        "ignored_keys": list(clinical.ignored) if clinical is not None else [],
        "flags": [f.to_dict() for f in (clinical.flags if clinical is not None else [])],
    }


def _version(bundle: Path) -> str:
    try:
        return str(json.loads((bundle / "configs" / "metadata.json").read_text()).get("version", "?"))
    except (OSError, ValueError):
        return "?"


class TacePlanningOperator(Operator):
    """Pre-treatment CT volume (and its selected series) -> :class:`TacePlan` on port ``plan``."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        bundles: dict[str, Path],
        settings: str | None = None,
        policy: PolicyChoice | None = None,
        **kwargs,
    ) -> None:
        self.bundles = {k: Path(v) for k, v in bundles.items()}
        self.settings = parse_settings(settings)
        self.policy = policy or PolicyChoice()
        check_bundles(self.bundles)  # before any DICOM is read: a missing checkpoint is one line
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.input("clinical")
        spec.output("plan")

    def planner(self) -> TacePlanner:
        """Loaded on first use (seconds), then kept for the process (a warm worker's next study)."""
        from oncoplan.operators.model_cache import cached

        roles = sorted(self.bundles)
        planner = cached(
            "tace",
            [self.bundles[r] for r in roles],
            (tuple(roles), repr(self.settings), repr(self.policy)),
            lambda: TacePlanner(self.bundles, self.settings, self.policy),
        )
        log.info("TACE bundles %s, settings %s", planner.versions, self.settings.label)
        return planner

    def compute(self, op_input, op_output, context) -> None:
        image = op_input.receive("image")
        selected = op_input.receive("study_selected_series_list")
        volume = from_selected_series(selected, image)
        phase = selected[0].selected_series[0].selection_name
        clinical = op_input.receive("clinical")
        op_output.emit(self.planner().plan(volume, phase, clinical, arterial_of(selected)), "plan")

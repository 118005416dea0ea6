"""The planner's search: candidate protocols from the policy, outcomes from the world model, risks
from the heuristic, the protocol with the lowest predicted risk (MeWM's protocol exploration).

Two searches share one evaluation path (:meth:`WorldModelPlanner.evaluate`): every protocol not yet
scored for this case is simulated ``samples`` times by the world model in ONE call (one diffusion
batch over all protocols and samples; the assistant segments them all), the heuristic scores every
(protocol, sample), and the mean, spread and sample risks are cached per protocol.

* :meth:`WorldModelPlanner.beam_search` (MeWM): the beam starts as the policy's first ``beam``
  candidates that lie in the search space; each expansion step extends every plan of the beam by
  one item: a drug while it has fewer than ``drug_horizon`` drugs, or an embolic while it has fewer
  than ``embolic_horizon`` embolics, from the allowed action set, skipping clinical conflicts
  (:func:`oncoplan.tace.actions.conflicts`). All children of the step are evaluated in one
  batch. A child joins only if its mean risk is below its parent's (an item is added only if the
  risk drops); the next beam is the ``beam`` best distinct plans among the beam and those children.
  The search stops when no step changes the beam, at most ``drug_horizon + embolic_horizon`` steps.
  (The released MeWM code runs the drug horizon, then forces Lipiodol, then the embolic horizon,
  and replaces the worst plan by a copy of the best after each step; copies of one plan add
  nothing to a deterministic beam, so distinct plans are kept instead. ``always_lipiodol`` adds
  Lipiodol to the starting plans as its rule 3 does.)
* :meth:`WorldModelPlanner.best_of_n`: every valid protocol of the action set (e.g. the 18 of the
  HCC-TACE-Seg set at 2 drugs / 2 embolics, or 1,404 over the whole base), evaluated in chunks of
  ``chunk`` protocols.

:meth:`WorldModelPlanner.search` picks one (``SearchSettings.search``): by default best-of-N when the
heuristic reads the response head's layouts (no rendering) and the policy is the offline one, the beam when
the heuristic reads rendered scans or a language model proposes the candidates.

Both return a :class:`Plan`: every evaluated protocol ranked by mean risk (with its spread over the
samples and the sample risks), how many model evaluations the search cost, and the wall time spent
in each model (dynamics network, assistant network, heuristic) and in the rest of the simulation.

Risks are comparable within one case only: the same seed gives every protocol the same diffusion
noise, so differences between candidates come from the protocol (common random numbers).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from oncoplan.planner.deid import Observation
from oncoplan.planner.heuristic import Scorer
from oncoplan.planner.policy import OfflinePolicy, Policy
from oncoplan.planner.prompts import split_action_set
from oncoplan.planner.separation import anova_f
from oncoplan.tace.actions import ACTION_BASE, Protocol, conflicts, protocol_space

SEARCHES = ("auto", "beam", "best_of_n")


@dataclass(frozen=True)
class SearchSettings:
    """Search size. The defaults fit one CPU; :data:`PAPER_SETTINGS` is MeWM's (B=5, T=5, horizons 2/2)."""

    beam: int = 3  # B: plans kept
    samples: int = 2  # T: simulated outcomes per protocol
    steps: int = 25  # DDIM steps of the dynamics model (at 10-15 the samples are too noisy for the assistant to read)
    drug_horizon: int = 2  # at most this many drugs in a plan
    embolic_horizon: int = 2  # at most this many embolics in a plan
    chunk: int = 8  # protocols per world-model call in best_of_n
    seed: int = 0  # diffusion noise (shared by every protocol of a case)
    always_lipiodol: bool = False  # MeWM rule 3 (conventional TACE): Lipiodol in every starting plan
    seg_overlap: float = 0.5  # assistant's sliding-window overlap on the study (B.3: 0.75, ~8x the windows)
    # Not MeWM's: when the world model's top protocols are not told apart (one-way ANOVA over their
    # sampled risks, p >= defer_alpha), recommend the policy's own first candidate (planner docs). None:
    # off, the default since the layout read-out (training/planner/docs/README.md, Defaults); 0.05 for the
    # rendered read-out.
    defer_alpha: float | None = None
    # Which search (:meth:`WorldModelPlanner.search_method`): "auto" scores every valid protocol (best_of_n) when
    # the heuristic reads the response head's layouts only and the policy is the offline one, else runs MeWM's
    # beam search; "beam" or "best_of_n" force one. Why: the beam only adds items to the policy's candidates, so over a
    # large action set it never reaches a protocol that drops or swaps one of theirs (liver-3 external site, the
    # same 48 cases: 10.8 months of regret with B=18, 5.8 over all 1,404 protocols; planner docs); without
    # rendering every protocol costs the response head only (`layout_viable_cm3` counts, draws nothing).
    search: str = "auto"

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        for name in ("beam", "samples", "steps", "drug_horizon", "embolic_horizon", "chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0 <= float(self.seg_overlap) < 1:
            raise ValueError(f"seg_overlap must be in [0, 1), got {self.seg_overlap!r}")
        if self.defer_alpha is not None and not 0 < float(self.defer_alpha) < 1:
            raise ValueError(f"defer_alpha must be in (0, 1) or null, got {self.defer_alpha!r}")


CPU_SETTINGS = SearchSettings()
PAPER_SETTINGS = SearchSettings(beam=5, samples=5, steps=25, drug_horizon=2, embolic_horizon=2, seg_overlap=0.75)
SETTINGS = {"cpu": CPU_SETTINGS, "paper": PAPER_SETTINGS}


def search_summary(method: str, settings: SearchSettings) -> str:
    """One line for a report: which search ran (a :class:`Plan`'s ``method``) and its size."""
    what = f"beam B={settings.beam}" if method == "beam_search" else "every valid protocol (best-of-N)"
    return (
        f"{what}, T={settings.samples} simulated outcomes per protocol, {settings.steps} DDIM steps, "
        f"horizons {settings.drug_horizon} drugs / {settings.embolic_horizon} embolics"
    )


def _fewest_items_first(protocol: Protocol) -> tuple[int, tuple[int, ...]]:
    """Tie-break between equal risks: fewer items first (an item joins a plan only if the risk drops,
    and equal simulations are common: the dynamics layout counts whole voxels), then action-base order."""
    return len(protocol.items), protocol.base_order()


def valid_protocols(action_set: Iterable[str], max_drugs: int = 2, max_embolics: int = 2) -> list[Protocol]:
    """Every conflict-free protocol over `action_set` with 1..max_drugs drugs and 1..max_embolics embolics."""

    drugs, embolics = split_action_set(action_set)
    return [p for p in protocol_space(drugs, embolics, max_drugs, max_embolics) if not conflicts(p.items)]


@dataclass(frozen=True)
class RankedProtocol:
    """One evaluated protocol: mean and standard deviation of its risk over the samples, and the samples."""

    protocol: Protocol
    mean_risk: float
    std_risk: float
    sample_risks: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": str(self.protocol),
            "items": list(self.protocol.items),
            "mean_risk": self.mean_risk,
            "std_risk": self.std_risk,
            "sample_risks": list(self.sample_risks),
        }


SEPARATION_TOP = 5  # the ranked protocols whose sampled risks the separation test compares


def separation_of(ranked: Sequence[RankedProtocol]) -> dict[str, Any] | None:
    """One-way ANOVA (F, p) over the top protocols' sampled risks; None with fewer than 2 x 2 samples.
    `exact`: every protocol's samples have the same risk while the protocols differ (a read-out that no
    sampling noise reaches, such as the layout one), so there is no noise to test against: F and p are
    None (not an infinite F and p = 0, which would read as certainty) and the ranking follows the means."""
    top = list(ranked[:SEPARATION_TOP])
    samples = {len(r.sample_risks) for r in top}
    if len(top) < 2 or len(samples) != 1 or min(samples) < 2:
        return None
    f, p = anova_f([r.sample_risks for r in top])
    exact = math.isinf(f)
    return {
        "f": None if exact else f,
        "p": None if exact else p,
        "protocols": len(top),
        "samples": min(samples),
        "exact": exact,
    }


@dataclass
class Plan:
    """A search result: ranked protocols (lowest mean risk first), cost and time per model.

    `best` is the world model's first protocol, or `prior` (the policy's first candidate) when the
    search was told to defer and the world model did not separate its top protocols (`separation`)."""

    method: str
    ranked: list[RankedProtocol]
    evaluations: dict[str, int]
    timing_s: dict[str, float]
    steps: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    skipped_candidates: list[str] = field(default_factory=list)
    separation: dict[str, float] | None = None
    prior: RankedProtocol | None = None

    @property
    def best(self) -> RankedProtocol:
        return self.prior or self.ranked[0]

    @property
    def pick(self) -> str:
        return "policy prior (world model did not separate its top protocols)" if self.prior else "world model"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "best": self.best.to_dict(),
            "pick": self.pick,
            "separation": self.separation,
            "ranked": [r.to_dict() for r in self.ranked],
            "evaluations": dict(self.evaluations),
            "timing_s": dict(self.timing_s),
            "steps": list(self.steps),
            "settings": dict(self.settings),
            "skipped_candidates": list(self.skipped_candidates),
        }


class ForwardTimer:
    """Wall time and call count of one world-model network's forward passes, on whichever backend runs
    it (module hooks would miss an exported runtime): the world model's callable is wrapped for the
    session and given back on close."""

    def __init__(self, world_model: Any, name: str) -> None:
        self.seconds, self.calls = 0.0, 0
        self._world, self._name, self._forward = world_model, name, world_model.backends[name]
        self._cuda = world_model.device.type == "cuda"
        world_model.use(**{name: self._timed})

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def _timed(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._sync()
        t0 = time.perf_counter()
        out = self._forward(*args, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def close(self) -> None:
        self._world.use(**{self._name: self._forward})

    def __enter__(self) -> ForwardTimer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Session:
    """One case's search: the cache of scored protocols, the counters and the model timers."""

    def __init__(
        self,
        planner: WorldModelPlanner,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        clinical: Mapping[str, Any] | None = None,
        features: np.ndarray | None = None,
    ) -> None:
        self.planner, self.pre, self.mask, self.clinical = planner, pre_window, mask_window, clinical
        self.features = features
        self.cache: dict[Protocol, RankedProtocol] = {}
        self.calls, self.simulations, self.rendered = 0, 0, 0  # outcomes scored; of them rendered
        self.simulate_s, self.heuristic_s = 0.0, 0.0
        self.steps: list[dict[str, Any]] = []
        backends = getattr(planner.world_model, "backends", {})
        self.timers = {
            name: ForwardTimer(planner.world_model, name) for name in ("dynamics", "assistant") if name in backends
        }
        self._heuristic_forwards = getattr(planner.scorer, "forwards", None)
        self._t0 = time.perf_counter()

    def close(self) -> None:
        for t in self.timers.values():
            t.close()

    def evaluate(self, protocols: Sequence[Protocol], step: str) -> None:
        """Score every protocol not yet in the cache with one world-model call and one heuristic pass."""
        new = list(dict.fromkeys(p for p in protocols if p not in self.cache))
        if not new:
            return
        planner = self.planner
        matrix = np.asarray([p.multi_hot() for p in new], dtype=np.float32)
        t0 = time.perf_counter()
        world, seed = planner.world_model, planner.settings.seed
        # A read-out of the layouts needs no rendering: it would be made and never looked at.
        render = getattr(planner.scorer, "reads_renderings", True)
        if render:
            sim = world.simulate(self.pre, self.mask, matrix, seed, features=self.features)
        else:
            sim = world.respond(matrix, seed, features=self.features)
        t1 = time.perf_counter()
        risks = np.asarray(planner.scorer(self.pre, self.mask, sim, new, self.clinical), dtype=np.float64)
        t2 = time.perf_counter()
        if risks.shape != (len(new), sim.samples):
            raise ValueError(f"the scorer returned shape {risks.shape}, expected {(len(new), sim.samples)}")
        self.calls += 1
        self.simulations += risks.size
        self.rendered += risks.size if render else 0
        self.simulate_s += t1 - t0
        self.heuristic_s += t2 - t1
        for p, r in zip(new, risks, strict=True):
            self.cache[p] = RankedProtocol(p, float(r.mean()), float(r.std()), tuple(float(v) for v in r))
        self.steps.append({"step": step, "evaluated": len(new), "simulations": int(risks.size)})

    def mean(self, protocol: Protocol) -> float:
        return self.cache[protocol].mean_risk

    def plan(self, method: str, skipped: list[str], beam: list[Protocol] | None, prior: Protocol | None = None) -> Plan:
        dyn, ast = self.timers.get("dynamics"), self.timers.get("assistant")
        dyn_s, ast_s = (dyn.seconds if dyn else 0.0), (ast.seconds if ast else 0.0)
        evaluations = {
            "protocols": len(self.cache),
            "simulations": self.simulations,
            "rendered": self.rendered,
            "world_model_calls": self.calls,
            "dynamics_forwards": dyn.calls if dyn else 0,
            "assistant_forwards": ast.calls if ast else 0,
        }
        if self._heuristic_forwards is not None:
            evaluations["heuristic_forwards"] = int(self.planner.scorer.forwards - self._heuristic_forwards)  # type: ignore[attr-defined]
        settings = {**asdict(self.planner.settings), "action_set": list(self.planner.action_set)}
        if beam is not None:
            settings["final_beam"] = [str(p) for p in beam]
        ranked = sorted(self.cache.values(), key=lambda r: (r.mean_risk, _fewest_items_first(r.protocol)))
        separation = separation_of(ranked)
        alpha = self.planner.settings.defer_alpha
        noise = separation is not None and not separation["exact"]  # exact: nothing to defer on
        defer = alpha is not None and prior is not None and noise and separation["p"] >= alpha
        return Plan(
            method=method,
            ranked=ranked,
            evaluations=evaluations,
            timing_s={
                "dynamics": round(dyn_s, 4),
                "assistant": round(ast_s, 4),
                "heuristic": round(self.heuristic_s, 4),
                "simulation_other": round(max(self.simulate_s - dyn_s - ast_s, 0.0), 4),
                "total": round(time.perf_counter() - self._t0, 4),
            },
            steps=self.steps,
            settings=settings,
            skipped_candidates=skipped,
            separation=separation,
            prior=self.cache[prior] if defer else None,
        )


class WorldModelPlanner:
    """Policy + world model + heuristic, searched as in MeWM; see the module doc.

    The planner sets the world model's ``samples`` and ``steps`` from its settings.
    """

    def __init__(
        self,
        world_model: Any,
        scorer: Scorer,
        policy: Policy,
        settings: SearchSettings = CPU_SETTINGS,
        action_set: Iterable[str] | None = None,
    ) -> None:
        self.world_model, self.scorer, self.policy, self.settings = world_model, scorer, policy, settings
        chosen = action_set if action_set is not None else getattr(policy, "action_set", ACTION_BASE)
        self.drugs, self.embolics = split_action_set(chosen)
        self.action_set = self.drugs + self.embolics
        world_model.samples, world_model.steps = settings.samples, settings.steps

    # ---------------------------------------------------------------- the search space

    def valid(self, protocol: Protocol) -> bool:
        """In the action set, 1..drug_horizon drugs, 1..embolic_horizon embolics, no clinical conflict."""
        s = self.settings
        return (
            all(a in self.action_set for a in protocol.items)
            and 1 <= len(protocol.drugs) <= s.drug_horizon
            and 1 <= len(protocol.embolics) <= s.embolic_horizon
            and not conflicts(protocol.items)
        )

    def space(self) -> list[Protocol]:
        """Every valid protocol (what best_of_n evaluates and an oracle should be searched over)."""
        return valid_protocols(self.action_set, self.settings.drug_horizon, self.settings.embolic_horizon)

    def children(self, protocol: Protocol) -> list[Protocol]:
        """`protocol` plus one allowed drug or embolic, conflict-free and within the horizons."""
        out = []
        for item in self.drugs + self.embolics:
            if item in protocol.items:
                continue
            child = Protocol.of((*protocol.items, item))
            if self.valid(child):
                out.append(child)
        return out

    def initial_candidates(self, observation: Observation | None = None) -> tuple[list[Protocol], list[str]]:
        """The policy's first `beam` candidates inside the search space (and those it skipped, why)."""
        b = self.settings.beam
        kept: list[Protocol] = []
        skipped: list[str] = []
        for cand in self.policy.propose(observation, 4 * b):
            proto = cand.protocol
            if self.settings.always_lipiodol and "Lipiodol" in self.embolics and "Lipiodol" not in proto.items:
                with_lipiodol = Protocol.of((*proto.items, "Lipiodol"))
                proto = with_lipiodol if self.valid(with_lipiodol) else proto
            if not self.valid(proto):
                skipped.append(f"{proto}: outside the search space")
            elif proto not in kept:
                kept.append(proto)
            if len(kept) == b:
                break
        if not kept:
            raise ValueError(
                f"the policy proposed no protocol within the action set {', '.join(self.action_set)} "
                f"and <= {self.settings.drug_horizon} drugs / {self.settings.embolic_horizon} embolics"
            )
        return kept, skipped

    # ---------------------------------------------------------------- searches

    def search_method(self) -> str:
        """The search `search` runs: the settings' choice, or for "auto" every valid protocol when the heuristic
        reads layouts only (no rendering: affordable over the whole space) and the policy is the offline one (its
        candidates are the space ranked by a prior: scoring all of it loses nothing of it), else the beam (a
        rendered read-out, or a language-model policy whose proposals are the point of asking it)."""
        if self.settings.search != "auto":
            return self.settings.search
        layouts = not getattr(self.scorer, "reads_renderings", True)
        offline = isinstance(self.policy, OfflinePolicy) and not self.settings.always_lipiodol  # a rule for beam starts
        return "best_of_n" if layouts and offline else "beam"

    def search(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        observation: Observation | None = None,
        clinical: Mapping[str, Any] | None = None,
        features: np.ndarray | None = None,
    ) -> Plan:
        """The planner's search (:meth:`search_method`): what the app and the evaluation run."""
        if self.search_method() == "beam":
            return self.beam_search(pre_window, mask_window, observation, clinical=clinical, features=features)
        return self.best_of_n(pre_window, mask_window, clinical=clinical, features=features, observation=observation)

    def beam_search(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        observation: Observation | None = None,
        clinical: Mapping[str, Any] | None = None,
        features: np.ndarray | None = None,
    ) -> Plan:
        """MeWM's search from the policy's candidates (module doc); `clinical` goes to the heuristic, what the
        pre-treatment scan shows of the lesion (`oncoplan.tace.lesion_features`, both phases where the study
        has them) to the world model's response head."""
        start, skipped = self.initial_candidates(observation)
        with self._session(pre_window, mask_window, clinical, features) as session:
            session.evaluate(start, "policy candidates")
            beam = sorted(start, key=lambda p: (session.mean(p), _fewest_items_first(p)))[: self.settings.beam]
            for step in range(1, self.settings.drug_horizon + self.settings.embolic_horizon + 1):
                kids = {p: self.children(p) for p in beam}
                session.evaluate([c for cs in kids.values() for c in cs], f"expansion {step}")
                improving = [c for p, cs in kids.items() for c in cs if session.mean(c) < session.mean(p)]
                pool = list(dict.fromkeys([*beam, *improving]))
                new_beam = sorted(pool, key=lambda p: (session.mean(p), _fewest_items_first(p)))[: self.settings.beam]
                if new_beam == beam:
                    break
                beam = new_beam
            return session.plan("beam_search", skipped, beam, prior=start[0])

    def best_of_n(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        clinical: Mapping[str, Any] | None = None,
        features: np.ndarray | None = None,
        observation: Observation | None = None,
    ) -> Plan:
        """Every valid protocol of the action set, `chunk` protocols per world-model call."""
        space = self.space()
        # The policy's first candidate, what `defer_alpha` falls back to as in the beam search; asked only when
        # the gate is on (a language-model policy would be sent a request for nothing).
        start, skipped = self.initial_candidates(observation) if self.settings.defer_alpha is not None else ([], [])
        with self._session(pre_window, mask_window, clinical, features) as session:
            for lo in range(0, len(space), self.settings.chunk):
                session.evaluate(space[lo : lo + self.settings.chunk], f"chunk {lo // self.settings.chunk + 1}")
            return session.plan("best_of_n", skipped, None, prior=start[0] if start else None)

    # ---------------------------------------------------------------- bookkeeping

    @contextlib.contextmanager
    def _session(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        clinical: Mapping[str, Any] | None,
        features: np.ndarray | None = None,
    ) -> Iterator[_Session]:
        session = _Session(self, pre_window, mask_window, clinical, features)
        try:
            yield session
        finally:
            session.close()

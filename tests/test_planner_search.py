"""TACE planner search and evaluation: beam search and best-of-N over the world model, the survival
heuristic on simulated outcomes, and the planning evaluation (F1/Jaccard against gold, regret against
the ground-truth oracle).

The three networks are built, randomly initialised, from the bundles' own inference configs at tiny
sizes (the settings of the bundle tests), so the plumbing is real; only where a test needs a known
answer does a stub stand in for the scoring interface (the ground-truth linear predictor).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from oncoplan.planner import OfflinePolicy
from oncoplan.planner.models import load_heuristic, load_models
from oncoplan.planner.search import (
    PAPER_SETTINGS,
    RankedProtocol,
    SearchSettings,
    WorldModelPlanner,
    separation_of,
    valid_protocols,
)
from oncoplan.planner.separation import separation_text
from oncoplan.runtime.bundles import bundle_parser
from oncoplan.tace.actions import ACTION_BASE, TCIA_DRUGS, TCIA_EMBOLICS, Protocol, conflicts
from oncoplan.tace.labels import TUMOR_LABELS
from oncoplan.tace.transforms import keep_largest_organ
from oncoplan.tace.world_model import LESION_MARGIN, Simulation, micro_batched, window_around
from oncoplan.training.planner.evaluate import (
    METHODS,
    action_set_for,
    ground_truth_patient,
    main,
    most_common,
    set_metrics,
)
from oncoplan.training.synth import liver as L
from oncoplan.training.tace.data import load_prepared
from oncoplan.training.tace.dynamics_eval import model_space_case

from .helpers import TINY_TACE

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {name: ROOT / "bundles" / f"tace_{name}" for name in ("dynamics", "assistant", "survival")}
TINY = {name: TINY_TACE[f"tace_{name}"] for name in BUNDLES}
TCIA_SET = TCIA_DRUGS + TCIA_EMBOLICS
FAST = SearchSettings(beam=2, samples=2, steps=2, chunk=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Overrides that load each bundle's network, randomly initialised, from a checkpoint in tmp."""
    tmp = tmp_path_factory.mktemp("planner_bundles")
    out = {}
    for i, (name, bundle) in enumerate(BUNDLES.items()):
        torch.manual_seed(i)
        network = bundle_parser(bundle, overrides={**TINY[name], "device": "$torch.device('cpu')"})
        net = network.get_parsed_content("network")
        if name == "dynamics":  # MONAI zero-initialises the output conv: perturb so outputs vary
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        torch.save(net.state_dict(), tmp / f"{name}.pt")
        out[name] = {**TINY[name], "ckpt_path": str(tmp / f"{name}.pt")}
    return out


@pytest.fixture(scope="module")
def models(tiny: dict[str, dict]):
    """World model and the survival NETWORK heuristic (its plumbing: patches, bags, forwards)."""
    return load_models(
        BUNDLES["dynamics"], BUNDLES["assistant"], BUNDLES["survival"], tiny, FAST, heuristic="survival_network"
    )


@pytest.fixture(scope="module")
def case(models, prepared_liver: Path, liver_cohort: Path):
    """The first prepared case: windows in model space and its ground-truth patient."""
    import pandas as pd

    world, _, preprocessing = models
    entry = load_prepared(prepared_liver)[0]
    pre, mask, _ = model_space_case(preprocessing, entry)
    pre_window, mask_window, _ = window_around(pre, mask, world.window)
    row = pd.read_csv(liver_cohort / "cohort.csv", dtype={"TCIA_ID": str}).set_index("TCIA_ID").loc[entry["case_id"]]
    patient = ground_truth_patient(liver_cohort, str(entry["case_id"]), row.to_dict())
    return {"pre": pre_window, "mask": mask_window, "patient": patient, "row": row}


class GroundTruthScorer:
    """A test double of the scoring interface: risk = the ground-truth linear predictor of the protocol."""

    def __init__(self, patient: L.LiverPatient) -> None:
        self.patient = patient

    def __call__(self, pre_window, mask_window, simulation: Simulation, protocols, clinical=None) -> np.ndarray:
        samples = simulation.windows.shape[1]
        return np.array([[L.outcome(self.patient, p).linear_predictor] * samples for p in protocols])


def _counting(monkeypatch: pytest.MonkeyPatch, world) -> list[int]:
    """Wrap world.simulate; returns the list of protocol counts of each call."""
    calls: list[int] = []
    original = world.simulate

    def simulate(pre_window, mask_window, protocols, seed=0, features=None):
        calls.append(len(protocols))
        return original(pre_window, mask_window, protocols, seed, features=features)

    monkeypatch.setattr(world, "simulate", simulate)
    return calls


# ---------------------------------------------------------------- metrics


def test_set_metrics_against_hand_examples() -> None:
    chosen, gold = Protocol.parse("Cisplatin; Doxorubicin; Lipiodol"), Protocol.parse("Doxorubicin; LC Beads; Lipiodol")
    m = set_metrics(chosen, gold)  # 2 shared of 3 and 3; union 4
    assert m == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "jaccard": 0.5})
    m = set_metrics(["Cisplatin"], ["Cisplatin", "Doxorubicin", "Mitomycin", "Lipiodol"])
    assert m == pytest.approx({"precision": 1.0, "recall": 0.25, "f1": 0.4, "jaccard": 0.25})
    assert set_metrics(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "jaccard": 1.0}
    assert set_metrics(["PVA"], ["Lipiodol"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "jaccard": 0.0}
    assert set_metrics([], ["Lipiodol"])["f1"] == 0.0 and set_metrics([], [])["f1"] == 1.0
    # Item order and spelling do not matter; the set does.
    assert set_metrics(Protocol.parse("Lipiodol; THP"), Protocol.parse("Pirarubicin; Lipiodol"))["f1"] == 1.0


def test_most_common_and_action_sets() -> None:
    a, b = "Cisplatin; Lipiodol", "Doxorubicin; LC Beads; Lipiodol"
    assert most_common([a, b, b]) == Protocol.parse(b)
    assert most_common([b, a]) == Protocol.parse(a)  # tie: first in action-base order (Cisplatin)
    assert action_set_for("internal") == TCIA_SET and action_set_for("external") == ACTION_BASE
    assert action_set_for("external", "tcia") == TCIA_SET and action_set_for("internal", "full") == ACTION_BASE
    assert len(valid_protocols(TCIA_SET)) == 18  # (3 + 3 drug sets) x (2 + 1 embolic sets), no conflict
    assert (PAPER_SETTINGS.beam, PAPER_SETTINGS.samples) == (5, 5)
    assert (PAPER_SETTINGS.drug_horizon, PAPER_SETTINGS.embolic_horizon) == (2, 2)


# ---------------------------------------------------------------- the heuristic on simulations


def test_risk_scorer_shares_patches_across_candidates(models, case) -> None:
    world, scorer, _ = models
    pre, mask = case["pre"], case["mask"]
    sim = world.simulate(pre, mask, np.asarray([Protocol.parse("Cisplatin; Lipiodol").multi_hot()] * 2), 0)
    starts = scorer.positions(mask, sim.patch_slices)
    assert len(starts) == 2 and starts == scorer.positions(mask, sim.patch_slices)  # fixed, seeded
    for s in starts:  # every patch lies in the window and holds tumor
        box = tuple(slice(a, a + r) for a, r in zip(s, scorer.roi, strict=True))
        assert all(a >= 0 and a + r <= w for a, r, w in zip(s, scorer.roi, mask.shape, strict=True))
        assert mask[box].any()
    before = scorer.forwards
    risks = scorer(pre, mask, sim)
    assert risks.shape == (2, 2) and np.isfinite(risks).all() and scorer.forwards > before
    np.testing.assert_allclose(risks[0], risks[1], rtol=1e-5)  # the same protocol twice: the same risks
    # A different post-treatment image changes the risk: the score reads the simulated outcome.
    altered = Simulation(sim.windows.copy(), sim.labels.copy(), sim.viable_fraction, sim.patch_slices, sim.response)
    altered.windows[1] = -1.0
    altered.labels[1] = 0
    changed = scorer(pre, mask, altered)
    np.testing.assert_allclose(changed[0], risks[0], rtol=1e-5)
    assert np.abs(changed[1] - risks[1]).max() > 1e-6


def test_simulated_tumor_stays_in_the_treated_lesion(models, case) -> None:
    """Tumor the assistant finds in the regenerated patch away from the pre-treatment lesion is the
    renderer's noise: it reads as liver, so the viable fraction and the heuristic see the lesion only."""
    from scipy import ndimage

    world, _, _ = models
    sim = world.simulate(case["pre"], case["mask"], np.asarray([Protocol.parse("Cisplatin; Lipiodol").multi_hot()]), 0)
    lesion = ndimage.binary_dilation(case["mask"] > 0, iterations=LESION_MARGIN)
    away = np.zeros(lesion.shape, dtype=bool)
    away[sim.patch_slices] = ~lesion[sim.patch_slices]
    windows = torch.as_tensor(sim.windows.reshape(-1, 1, *world.window))
    raw = world.assistant(windows).argmax(1).numpy()
    assert np.isin(raw[:, away], TUMOR_LABELS).any()  # the untrained assistant does label noise as tumor
    assert not np.isin(sim.labels[..., away], TUMOR_LABELS).any()
    kept = np.stack([keep_largest_organ(r.astype(np.uint8)) for r in raw])
    assert (sim.labels.reshape(kept.shape)[:, lesion] == kept[:, lesion]).all()  # the lesion is read as segmented


def test_stage_ranking_scores_every_stage_against_the_truth(models, case) -> None:
    """The diagnostic orders one case's space by each stage's score: the ground truth's own viable
    fraction ranks like OS (it drives it) and the regrets are the OS lost by each stage's choice."""
    from oncoplan.training.planner.stage_ranking import STAGES, TRUE_RESPONSE_STAGE, stage_ranking

    world, scorer, _ = models
    space = valid_protocols(("Cisplatin", "Doxorubicin", "Lipiodol", "LC Beads"), 1, 1)
    scorers = {"survival_network": scorer, "response_cox": load_heuristic(BUNDLES["survival"])}
    report = stage_ranking(world, scorers, case["pre"], case["mask"], case["patient"], space, 0, case["row"])
    assert report["protocols"] == len(space) and set(STAGES) <= set(report)
    assert report["true_viable_fraction"]["spearman_vs_os"] > 0.5
    for stage in STAGES:
        assert -1.0 <= report[stage]["spearman_vs_os"] <= 1.0 and report[stage]["regret_weeks"] >= 0.0
    # One drug per protocol: the response heuristic on the true residual orders like the true fraction.
    assert report[TRUE_RESPONSE_STAGE]["spearman_vs_os"] == pytest.approx(
        report["true_viable_fraction"]["spearman_vs_os"]
    )


def test_layout_readout_scores_what_the_renderer_was_asked_to_draw(models, case) -> None:
    """`response_cox_layout` reads the residual viable volume from the layout (the response head's
    prediction placed in the lesion), not from the segmented rendering: the stage ranking's layout
    stage, and blind to what the assistant saw."""
    from oncoplan.training.planner.stage_ranking import LAYOUT_STAGE, stage_ranking

    world, _, _ = models
    space = valid_protocols(("Cisplatin", "Doxorubicin", "Lipiodol", "LC Beads"), 1, 1)
    layout = load_heuristic(BUNDLES["survival"], "response_cox_layout")
    assert layout.name == "response_cox_layout"
    sim = world.simulate(case["pre"], case["mask"], np.array([p.multi_hot() for p in space], dtype=np.float32), 7)
    assert sim.seed == 7  # the read-out draws the layouts again from the renderer's seed
    risk = layout(case["pre"], case["mask"], sim, list(space), case["row"])
    assert risk.shape == sim.viable_fraction.shape and np.isfinite(risk).all()
    blind = Simulation(
        sim.windows, np.zeros_like(sim.labels), sim.viable_fraction, sim.patch_slices, sim.response, sim.seed
    )
    assert np.array_equal(layout(case["pre"], case["mask"], blind, list(space), case["row"]), risk)
    cox = load_heuristic(BUNDLES["survival"])
    report = stage_ranking(
        world, {"response_cox": cox}, case["pre"], case["mask"], case["patient"], space, 0, case["row"]
    )
    assert np.allclose(report["scores"][LAYOUT_STAGE], risk.mean(1))


# ---------------------------------------------------------------- searches


def test_micro_batched_slices_the_batch_and_passes_shared_arguments() -> None:
    calls: list[tuple[int, int]] = []

    def forward(x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((x.shape[0], timesteps.numel()))
        return x * timesteps.reshape(-1, *[1] * (x.ndim - 1)) + (0 if context is None else context)

    x, context = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    shared, per_sample = torch.tensor([2.0]), torch.arange(5.0)
    assert torch.equal(micro_batched(forward, 2)(x, shared), forward(x, shared))
    assert calls[:3] == [(2, 1), (2, 1), (1, 1)]  # the shared timestep is not sliced
    calls.clear()
    out = micro_batched(forward, 2)(x, timesteps=per_sample, context=context)
    assert torch.equal(out, forward(x, per_sample, context)) and calls[:3] == [(2, 2), (2, 2), (1, 1)]
    assert micro_batched(forward, None) is forward


def test_accelerated_world_model_simulates_like_eager(models, case, tmp_path: Path) -> None:
    """The world model on exported runtimes (dynamics UNet on ONNX Runtime at every DDIM step, the
    assistant on OpenVINO on every window) in micro-batches gives the eager model's outcomes in one
    batch: same windows to 1e-3, labels on >= 99.9% of voxels. A search on it times both networks."""
    from oncoplan.tace.world_model import WorldModel

    world, scorer, _ = models
    nets = (world.dynamics, world.sampler, world.patch, world.assistant, world.window, 2, FAST.steps)
    fast = WorldModel(*nets, micro_batch=1, anchor=world.anchor)  # anchored, as the planner samples
    backends = fast.accelerate(tmp_path, {"dynamics": ("onnxruntime",), "assistant": ("openvino",)})
    assert backends["dynamics"].startswith("onnxruntime") and backends["assistant"].startswith("openvino"), backends
    eager = WorldModel(*nets, micro_batch=None, anchor=world.anchor)
    protocols = np.asarray([Protocol.parse(p).multi_hot() for p in ("Cisplatin; Lipiodol", "Doxorubicin; PVA")])
    a = eager.simulate(case["pre"], case["mask"], protocols, 3)
    b = fast.simulate(case["pre"], case["mask"], protocols, 3)
    assert float(np.abs(a.windows - b.windows).max()) <= 1e-3
    assert float((a.labels == b.labels).mean()) >= 0.999
    np.testing.assert_allclose(a.viable_fraction, b.viable_fraction, atol=1e-2)
    # Classifier-free guidance doubles the dynamics batch (protocol and null halves) through the backend.
    fast.guidance = eager.guidance = 2.5
    a = eager.simulate(case["pre"], case["mask"], protocols, 3)
    b = fast.simulate(case["pre"], case["mask"], protocols, 3)
    assert float(np.abs(a.windows - b.windows).max()) <= 1e-3
    # The plan's timing covers the networks on whatever backend runs them, and leaves them as they were.
    ran_on = dict(fast.backends)
    plan = WorldModelPlanner(fast, scorer, OfflinePolicy(("Cisplatin", "Lipiodol")), FAST).beam_search(
        case["pre"], case["mask"]
    )
    assert plan.timing_s["dynamics"] > 0 and plan.timing_s["assistant"] > 0
    assert plan.evaluations["dynamics_forwards"] > 0 and plan.evaluations["assistant_forwards"] > 0
    assert fast.backends == ran_on


def test_beam_search_valid_protocols_one_batch_per_step(models, case, monkeypatch: pytest.MonkeyPatch) -> None:
    world, scorer, _ = models
    calls = _counting(monkeypatch, world)
    policy = OfflinePolicy(ACTION_BASE)  # up to 3 drugs: the planner must skip what exceeds its horizon
    planner = WorldModelPlanner(world, scorer, policy, FAST)
    plan = planner.beam_search(case["pre"], case["mask"])
    assert len(calls) == len(plan.steps) == plan.evaluations["world_model_calls"] >= 2
    assert calls == [s["evaluated"] for s in plan.steps] and all(n > 0 for n in calls)
    assert sum(calls) == len(plan.ranked) == plan.evaluations["protocols"]  # every protocol simulated once
    assert plan.evaluations["simulations"] == FAST.samples * len(plan.ranked)
    # One batch per DDIM step, each run in micro-batches sized for the device (one call on a GPU).
    micro = world.micro_batch or FAST.samples * max(calls)
    steps = world.anchor.steps_left(FAST.steps)  # the planner samples anchored: the last steps only
    assert plan.evaluations["dynamics_forwards"] == steps * sum(-(-n * FAST.samples // micro) for n in calls)
    for r in plan.ranked:
        p = r.protocol
        assert not conflicts(p.items) and set(p.items) <= set(ACTION_BASE)
        assert 1 <= len(p.drugs) <= 2 and 1 <= len(p.embolics) <= 2
        assert len(r.sample_risks) == FAST.samples and r.std_risk == pytest.approx(np.std(r.sample_risks))
    means = [r.mean_risk for r in plan.ranked]
    assert means == sorted(means) and str(plan.ranked[0].protocol) == plan.settings["final_beam"][0]
    assert plan.prior is None and plan.best == plan.ranked[0]  # no gate unless asked for (defer_alpha)
    assert any("outside the search space" in s for s in plan.skipped_candidates)
    timing = plan.timing_s
    assert timing["dynamics"] > 0 and timing["assistant"] > 0 and timing["heuristic"] > 0
    assert plan.evaluations["heuristic_forwards"] > 0
    json.dumps(plan.to_dict())


def test_separation_of_the_top_protocols() -> None:
    def ranked(*samples: tuple[float, ...]) -> list[RankedProtocol]:
        protocol = Protocol.of(("Doxorubicin", "Lipiodol"))
        return [RankedProtocol(protocol, float(np.mean(s)), float(np.std(s)), s) for s in samples]

    apart = separation_of(ranked((1.0, 1.01), (2.0, 2.01), (3.0, 3.02)))
    assert apart is not None and apart["p"] < 0.01 and apart["protocols"] == 3 and apart["samples"] == 2
    noise = separation_of(ranked((1.0, 2.0), (1.1, 2.1), (0.9, 1.9)))
    assert noise is not None and noise["p"] > 0.5
    assert separation_of(ranked((1.0,), (2.0,))) is None  # T = 1: no within-protocol spread to compare
    assert not apart["exact"] and not noise["exact"]
    # Each protocol's samples with one risk (the layout read-out): no noise to test against. F and p are
    # None, not an infinite F with p = 0 that would read as certainty (and is not JSON).
    exact = separation_of(ranked((1.0, 1.0), (2.0, 2.0)))
    assert exact == {"f": None, "p": None, "protocols": 2, "samples": 2, "exact": True}
    assert "no sampling noise" in separation_text(exact) and "ANOVA" not in separation_text(exact)
    json.dumps(exact, allow_nan=False)


@pytest.mark.parametrize("p", [0.9, 0.001])
def test_beam_search_defers_to_the_policy_only_without_separation(models, case, monkeypatch, p: float) -> None:
    """With `defer_alpha`, a plan whose top protocols are not told apart recommends the policy's first
    candidate (the prior); a separated one keeps the world model's first protocol."""
    import oncoplan.planner.search as search

    world, scorer, _ = models
    separation = {"f": 1.0, "p": p, "protocols": 2, "samples": 2, "exact": False}
    monkeypatch.setattr(search, "separation_of", lambda ranked: separation)
    policy = OfflinePolicy(TCIA_SET, max_drugs=2)
    planner = WorldModelPlanner(world, scorer, policy, replace(FAST, defer_alpha=0.05))
    prior = planner.initial_candidates()[0][0]
    plan = planner.beam_search(case["pre"], case["mask"])
    if p >= 0.05:
        assert plan.best.protocol == prior and plan.prior is not None and plan.pick.startswith("policy prior")
    else:
        assert plan.best is plan.ranked[0] and plan.prior is None and plan.pick == "world model"
    assert json.loads(json.dumps(plan.to_dict()))["separation"]["p"] == p


def test_beam_search_with_the_default_response_heuristic(models, case) -> None:
    """The planner's default scorer (the survival bundle's response Cox model) ranks the same search by
    the simulated residual viable tumor, the regimen and the case's clinical row."""
    world, _, _ = models
    scorer = load_heuristic(BUNDLES["survival"])
    planner = WorldModelPlanner(world, scorer, OfflinePolicy(TCIA_SET, max_drugs=2), FAST)
    clinical = case["row"].to_dict()
    plan = planner.beam_search(case["pre"], case["mask"], clinical=clinical)
    assert plan.ranked and all(np.isfinite(r.mean_risk) for r in plan.ranked)
    assert "heuristic_forwards" not in plan.evaluations  # no network in this heuristic
    # Child-Pugh C instead of A moves every protocol's risk by the patient term and, per drug and per
    # embolic, by the regimen's toxicity terms: the same simulations, only the clinical row differs.
    worse = planner.best_of_n(case["pre"], case["mask"], clinical={**clinical, "CPS": "C"})
    base = {
        r.protocol: r.mean_risk
        for r in planner.best_of_n(case["pre"], case["mask"], clinical={**clinical, "CPS": "A"}).ranked
    }
    coef = scorer.model.coef
    for r in worse.ranked:
        shift = 2 * coef["Child-Pugh"] + 2 * len(r.protocol.drugs) * coef["drugs x Child-Pugh"]
        shift += 2 * len(r.protocol.embolics) * coef["embolics x Child-Pugh"]
        assert r.mean_risk - base[r.protocol] == pytest.approx(shift)


def test_a_layout_read_out_search_renders_nothing_and_ranks_as_if_it_did(models, case) -> None:
    """The planner's default heuristic reads the layouts the renderer is conditioned on, never the
    renderings: the search asks the world model for the response head's prediction only (no dynamics or
    assistant call), and every protocol gets the risks it gets when everything is rendered."""
    world, _, _ = models
    layout = load_heuristic(BUNDLES["survival"], "response_cox_layout")
    assert layout.reads_renderings is False
    clinical = case["row"].to_dict()

    def search(scorer):
        planner = WorldModelPlanner(world, scorer, OfflinePolicy(TCIA_SET, max_drugs=2), FAST)
        return planner.beam_search(case["pre"], case["mask"], clinical=clinical)

    fast = search(layout)
    rendering = copy.copy(layout)
    rendering.reads_renderings = True
    full = search(rendering)
    assert fast.evaluations["dynamics_forwards"] == fast.evaluations["assistant_forwards"] == 0
    assert full.evaluations["dynamics_forwards"] > 0 and full.evaluations["assistant_forwards"] > 0
    assert fast.evaluations["rendered"] == 0 and full.evaluations["rendered"] == full.evaluations["simulations"] > 0
    assert [r.to_dict() for r in fast.ranked] == [r.to_dict() for r in full.ranked]


def test_the_planners_search_scores_every_protocol_for_a_layout_read_out_and_beams_for_renderings(models, case) -> None:
    """A layout read-out costs the response head and a layout per protocol, so with the offline policy the default
    search scores the whole valid space (the beam only adds items to the policy's candidates and, over a large
    action set, never reaches a protocol that swaps one of theirs); a rendered read-out, or a policy that is
    asked for its candidates, keeps MeWM's beam search."""
    world, _, _ = models
    layout = load_heuristic(BUNDLES["survival"], "response_cox_layout")
    rendering = copy.copy(layout)
    rendering.reads_renderings = True
    policy = OfflinePolicy(ACTION_BASE, max_drugs=2)
    fast = WorldModelPlanner(world, layout, policy, FAST)
    assert fast.search_method() == "best_of_n"
    plan = fast.search(case["pre"], case["mask"], clinical=case["row"].to_dict())
    assert plan.method == "best_of_n" and {r.protocol for r in plan.ranked} == set(fast.space())
    assert len(plan.ranked) > 1000  # the whole base: beyond what a beam of the policy's candidates reaches
    assert WorldModelPlanner(world, rendering, policy, FAST).search_method() == "beam"

    class AskedPolicy:  # a policy that is not the offline ranking (a language model's): its proposals start the beam
        action_set = ACTION_BASE

        def propose(self, observation, n):
            return policy.propose(observation, n)

    assert WorldModelPlanner(world, layout, AskedPolicy(), FAST).search_method() == "beam"
    forced = WorldModelPlanner(world, layout, policy, replace(FAST, search="beam"))
    assert forced.search_method() == "beam"
    with pytest.raises(ValueError, match="search must be one of"):
        replace(FAST, search="exhaustive")


def test_the_layout_read_out_counts_the_viable_voxels_the_drawn_layouts_hold(models, case) -> None:
    """`layout_viable_cm3` counts without drawing; on a real planning window it equals the drawn layouts."""
    from oncoplan.planner.response_heuristic import layout_viable_cm3
    from oncoplan.tace.dynamics import layout_labels
    from oncoplan.tace.labels import LABELS

    world, _, _ = models
    patch = world.respond(np.zeros((1, len(ACTION_BASE)), np.float32)).patch_slices
    rng = np.random.default_rng(3)  # responses as a head gives them (the tiny test head's are all alike)
    responses = np.c_[rng.uniform(0, 1, (30, 3)), rng.uniform(0.1, 1.2, (30, 1))].astype(np.float32)
    sim = Simulation(None, None, None, patch, responses, seed=3, samples=2)
    counted = layout_viable_cm3(case["mask"], sim, 1.0)
    lesion = torch.as_tensor(case["mask"][patch] > 0, dtype=torch.float32)[None, None]
    drawn = layout_labels(lesion, torch.as_tensor(responses), 2, 3) == LABELS["viable"]
    assert counted.shape == (30, 2) and counted.any()
    np.testing.assert_array_equal(counted, drawn.reshape(30, 2, -1).sum(-1))


def test_beam_children_add_one_item_within_horizons(models) -> None:
    world, scorer, _ = models
    planner = WorldModelPlanner(world, scorer, OfflinePolicy(ACTION_BASE, max_drugs=2), FAST)
    parent = Protocol.parse("Cisplatin; PVA")
    kids = planner.children(parent)
    assert kids and all(len(k.items) == 3 and set(parent.items) < set(k.items) for k in kids)
    assert not any(conflicts(k.items) for k in kids)
    added = {next(a for a in k.items if a not in parent.items) for k in kids}
    assert not added & {"Oxaliplatin", "Lobaplatin", "Nedaplatin", "Absolute Alcohol", "Gelatin Sponge"}
    assert planner.children(Protocol.parse("Cisplatin; Mitomycin; Lipiodol; PVA")) == []  # both horizons full


def test_best_of_n_finds_the_oracle_with_a_ground_truth_scorer(models, case, monkeypatch) -> None:
    world, _, _ = models
    calls = _counting(monkeypatch, world)
    patient = case["patient"]
    stub = GroundTruthScorer(patient)
    planner = WorldModelPlanner(world, stub, OfflinePolicy(TCIA_SET, max_drugs=2), FAST)
    space = planner.space()
    plan = planner.best_of_n(case["pre"], case["mask"])
    assert {r.protocol for r in plan.ranked} == set(space) == set(valid_protocols(TCIA_SET))
    assert calls == [8, 8, 2]  # 18 protocols in chunks of 8
    assert plan.best.protocol == L.oracle_protocol(patient, space)
    assert L.regret_weeks(patient, plan.best.protocol, space) == 0.0
    # The beam search under the same scorer never ends worse than its best starting candidate.
    beam = planner.beam_search(case["pre"], case["mask"])
    start, _ = planner.initial_candidates()
    assert L.regret_weeks(patient, beam.best.protocol, space) >= 0.0
    assert beam.best.mean_risk <= min(L.outcome(patient, p).linear_predictor for p in start) + 1e-12
    # It stops at a local optimum: no allowed one-item addition to its choice lowers the risk.
    lp = L.outcome(patient, beam.best.protocol).linear_predictor
    assert all(L.outcome(patient, c).linear_predictor >= lp for c in planner.children(beam.best.protocol))


# ---------------------------------------------------------------- the evaluation CLI


def test_evaluation_cli_writes_every_method(tiny, prepared_liver: Path, liver_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "planning"
    over = [f"--{name}-overrides={json.dumps(value)}" for name, value in tiny.items()]
    argv = [
        *("--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--out", str(out)),
        *over,
        *("--settings", "cpu", "--samples", "1", "--steps", "2", "--beam", "2", "--n-bootstrap", "200", "--quiet"),
    ]
    assert main(argv) == 0
    report = json.loads((out / "planning_evaluation.json").read_text())
    assert report["synthetic"] is True and report["n_cases"] == 2
    assert set(report["methods"]) == set(METHODS)
    assert report["methods"]["oracle"]["regret_weeks"] == [0.0, 0.0, 0.0]
    assert report["methods"]["gold"]["f1"][0] == 1.0
    assert set(report["paired_world_model_minus"]) == set(METHODS) - {"world_model"}
    for c in report["cases"]:
        assert set(c["methods"]) == set(METHODS)
        assert c["action_set"] == list(TCIA_SET) and c["space_size"] == 18  # internal site: HCC-TACE-Seg set
        chosen = Protocol.parse(c["methods"]["world_model"]["protocol"])
        assert c["methods"]["world_model"]["in_space"] and not conflicts(chosen.items)
        for m in c["methods"].values():
            assert 0.0 <= m["f1"] <= 1.0 and np.isfinite(m["regret_weeks"])
            assert m["regret_months"] == pytest.approx(m["regret_weeks"] / 4.345)
    md = (out / "planning_evaluation.md").read_text()
    assert "SYNTHETIC" in md and "64.08" in md and "44.29" in md
    for label in ("World-model planner", "Offline policy", "Most common", "Random", "Physician", "Oracle"):
        assert label in md


def test_evaluation_cli_bad_input_writes_nothing(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "planning"
    over = [f"--{name}-overrides={json.dumps(value)}" for name, value in tiny.items()]
    assert main(["--prepared", str(tmp_path / "missing"), "--out", str(out), *over, "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not warnings
    assert len(err) == 1 and "datalist.json" in err[0]
    assert main(["--prepared", str(tmp_path), "--out", str(out), *over[:2], "--survival", str(tmp_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
    missing = json.dumps({**tiny["survival"], "ckpt_path": str(tmp_path / "none.pt")})
    assert main(["--prepared", str(tmp_path), "--out", str(out), *over[:2], f"--survival-overrides={missing}"]) == 2
    assert "no survival weights" in capsys.readouterr().err
    assert not out.exists()


def test_the_evaluation_takes_the_apps_policy_choice_and_a_ct_only_mode(
    tiny, prepared_liver: Path, liver_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`oncoplan evaluate tace --policy openai --allow-send --clinical none`: every case asks the loopback
    endpoint (de-identified: no case ID; CT only: no covariate in the text), the report names the policy
    and the mode."""
    from .test_planner_policy import LoopbackLLM

    llm = LoopbackLLM()
    llm.script = ['{"Chemotherapy Drugs": "Doxorubicin", "Embolization Materials": "Lipiodol"}'] * 8
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ONCOPLAN_LLM_BASE_URL", llm.base_url)
    out = tmp_path / "planning"
    over = [f"--{name}-overrides={json.dumps(value)}" for name, value in tiny.items()]
    argv = [
        *("--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--out", str(out)),
        *over,
        *("--settings", "cpu", "--samples", "1", "--steps", "2", "--beam", "2", "--n-bootstrap", "50", "--quiet"),
        *("--policy", "openai", "--allow-send", "--llm-model", "site-llm", "--clinical", "none"),
    ]
    try:
        assert main(argv) == 0
    finally:
        llm.close()
    report = json.loads((out / "planning_evaluation.json").read_text())
    assert report["policy"]["label"] == "openai:site-llm" and report["policy"]["fallbacks"] == 0
    assert report["clinical"] == "none" and all(c["policy_fallback"] is None for c in report["cases"])
    assert len(llm.bodies) == 2 * report["n_cases"]  # the search's candidates and the policy's top-1, per case
    for raw, body in zip(llm.raw, llm.bodies, strict=True):
        assert b"HCC_" not in raw and "Child-Pugh" not in body["messages"][0]["content"]
    md = (out / "planning_evaluation.md").read_text()
    assert "planner: openai:site-llm policy" in md and "clinical covariates: none (CT only" in md

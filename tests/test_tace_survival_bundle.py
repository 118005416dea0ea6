"""The TACE survival (heuristic function) bundle: every config runs with `python -m monai.bundle run` at
tiny sizes; the Cox loss matches a hand computation; the risk depends on the post-treatment input; MIL
pooling ignores patch order; and the C-indices agree with scikit-survival. The checks every bundle passes
(metadata, the 2-rank gloo run) are in tests/test_bundles.py; the TensorRT fallback is checked here, on the
inference run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from oncoplan.tace.survival_net import BagInferer, GatedAttentionMIL, PatchBagd, SurvivalNet
from oncoplan.training.tace.survival import (
    WEEKS_PER_MONTH,
    CoxPHLoss,
    c_index_summary,
    harrell_c,
    survival_items,
    uno_c,
)

from .bundle_harness import SURVIVAL, Paths, assert_tensorrt_fell_back, survival_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(request: pytest.FixtureRequest) -> Path:
    return survival_cohort(request)


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> Paths:
    return SURVIVAL.trained(request)


def test_train_writes_checkpoint_and_curve(trained: Paths) -> None:
    assert (trained["models"] / "model.pt").stat().st_size > 0
    with open(trained["tmp"] / "eval" / "training_curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(0.0 <= float(r["val_metric"]) <= 1.0 for r in rows)


def test_inference_writes_a_risk_per_case(trained: Paths) -> None:
    """inference.json, run through the TensorRT overlay (which falls back to PyTorch without a GPU)."""
    log = SURVIVAL.run_inference(trained, "infer", "inference.json", "inference_trt.json")
    assert_tensorrt_fell_back(log)
    rows = json.loads((trained["tmp"] / "infer" / "risk.json").read_text())
    assert [r["case_id"] for r in rows] == ["S0", "S1", "S2", "S3"]
    assert all(math.isfinite(r["risk"]) for r in rows)
    assert rows[0]["os_months"] == pytest.approx(20.0 / WEEKS_PER_MONTH)
    assert (trained["tmp"] / "infer" / "risk.csv").read_text().startswith("case_id,risk")


def test_evaluate_reports_c_indices_with_cis(trained: Paths) -> None:
    cohort_csv = str(trained["data"] / "cohort.csv")
    extra = ("--train_source", str(trained["data"]), "--cohort_csv", cohort_csv, "--n_bootstrap", "200")
    SURVIVAL.run_inference(trained, "evaluate", "inference.json", "evaluate.json", extra=extra)
    report = json.loads((trained["tmp"] / "evaluate" / "survival_evaluation.json").read_text())
    summary = report["summary"]
    assert summary["n"] == 4 and summary["events"] == 3
    for key in ("harrell_c", "uno_c"):
        c, lo, hi = summary[key]
        assert 0.0 <= lo <= c <= hi <= 1.0
    assert report["cases"][0]["os_months"] == pytest.approx(10.0 / WEEKS_PER_MONTH)  # from cohort_csv
    assert "Uno's C" in (trained["tmp"] / "evaluate" / "survival_evaluation.md").read_text()


def test_survival_items_read_months_and_the_cohort_csv(cohort: Path) -> None:
    items = survival_items(cohort)
    assert [i["case_id"] for i in items] == ["S0", "S1", "S2", "S3"]
    assert items[1]["label"].tolist() == pytest.approx([60.0 / WEEKS_PER_MONTH, 0.0])
    from_csv = survival_items(cohort, cohort / "cohort.csv")
    assert from_csv[1]["label"][0] == pytest.approx(30.0 / WEEKS_PER_MONTH)


def test_cox_loss_matches_a_hand_computation_with_ties() -> None:
    risk = torch.tensor([0.5, -0.2, 1.0, 0.0])
    target = torch.tensor([[2.0, 1], [2.0, 1], [3.0, 0], [5.0, 1]])
    everyone = math.log(sum(math.exp(r) for r in (0.5, -0.2, 1.0, 0.0)))
    # Breslow: both deaths at t=2 share the full risk set; the death at t=5 is alone in its set.
    expected = -((0.5 - everyone) + (-0.2 - everyone) + (0.0 - 0.0)) / 3
    assert CoxPHLoss()(risk, target).item() == pytest.approx(expected, rel=1e-6)
    assert CoxPHLoss()(risk, torch.stack([target[:, 0], torch.zeros(4)], 1)).item() == 0.0  # no deaths
    # the 5-year term: deaths by 60 months are positives, survivors past 60 negatives
    bce = CoxPHLoss(five_year_weight=1.0)(risk, torch.tensor([[10.0, 1], [70.0, 0], [20.0, 0], [80.0, 1]]))
    assert bce.item() > CoxPHLoss()(risk, torch.tensor([[10.0, 1], [70.0, 0], [20.0, 0], [80.0, 1]])).item()


def test_cox_gradient_ranks_early_deaths_highest() -> None:
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    target = torch.stack([time, torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])], 1)
    risk = torch.zeros(5, requires_grad=True)
    CoxPHLoss()(risk, target).backward()
    g = risk.grad.tolist()
    assert g[0] < g[1] < g[3] < 0 < g[2] and g[4] > 0  # descent raises earlier deaths more, lowers the censored
    optimizer = torch.optim.SGD([risk], lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        CoxPHLoss()(risk, target).backward()
        optimizer.step()
    assert harrell_c(time.numpy(), target[:, 1].numpy(), risk.detach().numpy()) == 1.0


def _tiny_net() -> SurvivalNet:
    torch.manual_seed(0)
    return SurvivalNet(channels=(8, 16, 16), num_heads=2, mil_hidden=8, head_hidden=8).eval()


def test_the_post_treatment_input_changes_the_risk() -> None:
    net = _tiny_net()
    bag = torch.randn(1, 3, 4, 16, 16, 16)
    bag[:, :, 1] = bag[:, :, 3] = 0.0
    bag[:, :, 1, 4:12, 4:12, 4:12] = 1.0  # pre tumor
    shrunk = bag.clone()
    bag[:, :, 3, 4:12, 4:12, 4:12] = 1.0  # post tumor unchanged ...
    shrunk[:, :, 3, 6:10, 6:10, 6:10] = 1.0  # ... or shrunk after treatment
    with torch.no_grad():
        assert (net(bag) - net(shrunk)).abs().item() > 1e-6


def test_mil_pooling_is_invariant_to_patch_order() -> None:
    net = _tiny_net()
    bag = torch.randn(2, 4, 4, 16, 16, 16)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        assert torch.allclose(net(bag), net(bag[:, order]), atol=1e-5)
        mean = BagInferer("mean")
        assert torch.allclose(mean(bag, net), mean(bag[:, order], net), atol=1e-5)
    mil, h = GatedAttentionMIL(6, 4), torch.randn(3, 5, 6)
    pooled, weights = mil(h)
    assert torch.allclose(pooled, mil(h[:, [4, 2, 0, 1, 3]])[0], atol=1e-6)
    assert torch.allclose(weights.sum(1), torch.ones(3))


def test_patch_bag_uses_the_same_centres_for_pre_and_post() -> None:
    from monai.transforms import RandCropByPosNegLabeld

    image = torch.arange(32**3, dtype=torch.float32).reshape(1, 32, 32, 32)
    mask = torch.zeros(1, 32, 32, 32)
    mask[:, 10:20, 12:22, 8:18] = 1.0
    keys = ["pre_image", "pre_label", "post_image", "post_label"]
    cropper = RandCropByPosNegLabeld(keys, "pre_label", (8, 8, 8), pos=1, neg=0, num_samples=3)
    bag_of = PatchBagd(cropper, keys=keys, seed=0)
    data = {"pre_image": image, "pre_label": mask, "post_image": image.clone(), "post_label": mask.clone()}
    out = bag_of({**data, "case_id": "x"})
    bag = out["image"]
    assert bag.shape == (3, 4, 8, 8, 8) and out["case_id"] == "x"
    assert torch.equal(bag[:, 0], bag[:, 2]) and torch.equal(bag[:, 1], bag[:, 3])
    assert (bag[:, 1].flatten(1).sum(1) > 0).all()  # tumour-centred
    assert torch.equal(bag_of(data)["image"], bag)  # seeded: repeatable


def test_c_indices_agree_with_sksurv() -> None:
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
    from sksurv.util import Surv

    time = np.array([5.0, 8.0, 8.0, 12.0, 20.0, 25.0, 30.0])
    event = np.array([1, 1, 0, 1, 0, 1, 0])
    risk = np.array([2.0, 1.5, 1.0, 1.8, 0.2, 0.5, 0.1])
    # comparable pairs (i died first): t=5: 6; t=8: 4 later + the censored tie at 8; t=12: 3; t=25: 1
    # -> 15 pairs, one discordant (t=8 has risk 1.5 < 1.8 at t=12) -> 14/15
    assert harrell_c(time, event, risk) == pytest.approx(14 / 15)
    assert harrell_c(time, event, risk) == pytest.approx(concordance_index_censored(event > 0, time, risk)[0])
    ref_time = np.array([3.0, 6.0, 9.0, 15.0, 22.0, 28.0, 35.0, 40.0])
    ref_event = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    expected = concordance_index_ipcw(
        Surv.from_arrays(ref_event > 0, ref_time), Surv.from_arrays(event > 0, time), risk, tau=30.0
    )[0]
    assert uno_c(time, event, risk, ref_time, ref_event) == pytest.approx(expected)
    assert math.isnan(harrell_c([1.0, 2.0], [0, 0], [0.1, 0.2]))  # no deaths: undefined
    summary = c_index_summary(time, event, risk, ref_time, ref_event, n_bootstrap=200)
    c, lo, hi = summary["harrell_c"]
    assert c == pytest.approx(14 / 15) and lo <= c <= hi and summary["uno_tau_months"] == 30.0

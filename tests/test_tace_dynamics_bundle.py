"""The TACE dynamics bundle: every config runs with `python -m monai.bundle run` (tiny sizes); the
protocol reaches the response, the layout draws it and the layout reaches the image; simulation batches
protocols and samples. The checks every bundle passes (metadata, the 2-rank gloo run, the TensorRT
fallback) are in tests/test_bundles.py."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from oncoplan.tace.actions import ACTION_BASE
from oncoplan.tace.dynamics import HU_WINDOW, ResponseConditionedUNet, condition, multi_hot

from .bundle_harness import ASSISTANT, DYNAMICS, Paths
from .helpers import TINY_TACE

pytestmark = pytest.mark.slow

BUNDLE = DYNAMICS.root
TINY_ASSISTANT = TINY_TACE["tace_assistant"]


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> Paths:
    return DYNAMICS.trained(request)


def test_train_writes_checkpoint_and_curve(trained: Paths) -> None:
    assert (trained["models"] / "model.pt").stat().st_size > 0
    assert (trained["tmp"] / "eval" / "training_curve.png").exists()


def test_inference_simulates_every_case_with_its_protocol(trained: Paths) -> None:
    DYNAMICS.run_inference(trained, "sim", "inference.json")
    cases = sorted(p for p in (trained["tmp"] / "sim").iterdir() if p.is_dir())
    assert len(cases) == 2
    for case in cases:
        samples = [nib.load(case / f"simulated_post_{i}.nii.gz") for i in range(2)]
        assert samples[0].shape == (16, 16, 16)
        data = np.asarray(samples[0].dataobj)
        assert data.min() >= -175.0 and data.max() <= 600.0  # HU within the model's window
        assert (case / "protocol.txt").read_text().strip()
        predicted = json.loads((case / "predicted_response.json").read_text())
        assert list(predicted) == ["viable share", "necrosis share", "Lipiodol share", "volume ratio"]


def test_evaluate_reports_protocol_sensitivity(trained: Paths, tmp_path: Path) -> None:
    """The evaluation pipeline end to end on tiny untrained-quality models (the number is not checked here)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ASSISTANT.root / "configs" / "inference.json")
    parser.update({"bundle_root": str(ASSISTANT.root), **TINY_ASSISTANT})
    assistant_ckpt = tmp_path / "assistant.pt"
    torch.save(parser.get_parsed_content("network").state_dict(), assistant_ckpt)
    overrides = json.dumps({**TINY_ASSISTANT, "ckpt_path": str(assistant_ckpt)}).replace("true", "True")
    extra = ("--assistant_overrides", overrides, "--protocols_per_case", "4")
    DYNAMICS.run_inference(trained, "sensitivity", "inference.json", "evaluate.json", extra=extra)
    report = json.loads((trained["tmp"] / "sensitivity" / "protocol_sensitivity.json").read_text())
    assert report["summary"]["n_cases"] == 2
    case = report["cases"][0]
    assert len(case["protocols"]) == 4 and case["true_viable_fraction"] == sorted(case["true_viable_fraction"])
    assert len(case["intensity_viable_fraction"]) == 4
    assert all(0.0 <= f <= 1.0 for f in case["intensity_viable_fraction"])
    assert {"spearman_mean", "spearman_intensity_mean", "spearman_response_head_mean"} <= set(report["summary"])
    assert len(case["predicted_viable_share"]) == 4
    assert 0.0 <= case["background_error_hu"] <= 775.0


def test_intensity_read_out_classifies_voxels_by_the_cohort_hu_table() -> None:
    """PVP: viable 80, necrosis 24, liver 115, Lipiodol 450 HU; voxels outside the lesion do not count."""
    from oncoplan.training.tace.dynamics_eval import intensity_viable_fraction

    hu = np.array([80.0, 85.0, 20.0, 450.0, 118.0, 80.0])  # viable x2, necrosis, Lipiodol, liver, outside
    lesion = np.array([True, True, True, True, True, False])
    window = (hu + 175.0) / 775.0 * 2.0 - 1.0
    assert intensity_viable_fraction(window, lesion, "PVP") == 0.5  # 2 viable of 4 tumor voxels
    assert intensity_viable_fraction(window, np.zeros(6, bool), "PVP") == 0.0


def _scalings(node: object) -> list[dict]:
    """Every ScaleIntensityRanged transform in a parsed config."""
    if isinstance(node, dict):
        found = [node] if node.get("_target_") == "ScaleIntensityRanged" else []
        return found + [t for v in node.values() for t in _scalings(v)]
    return [t for v in node for t in _scalings(v)] if isinstance(node, list) else []


def test_the_hu_window_is_one_value_in_configs_and_code() -> None:
    """The inference config's `hu_window` (which its scaling references), the training config's
    scaling and the code's HU_WINDOW (the anchor's default, the evaluation's read-out) agree."""
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert tuple(inference["hu_window"]) == HU_WINDOW
    assert [(t["a_min"], t["a_max"]) for t in _scalings(inference)] == [("@hu_window#0", "@hu_window#1")]
    assert {(t["a_min"], t["a_max"]) for t in _scalings(train)} == {HU_WINDOW}


def _perturbed(seed: int = 0) -> ResponseConditionedUNet:
    """A tiny network with every weight perturbed: MONAI zero-initialises output projections, which
    would hide what the conditions do."""
    torch.manual_seed(seed)
    net = ResponseConditionedUNet(channels=(8, 16, 16), norm_num_groups=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_the_protocol_sets_the_response_and_the_response_changes_the_image() -> None:
    """Unlike MeWM's released inference, the protocol is an input the model cannot ignore: the head
    learns a protocol effect from training pairs, the layout draws the predicted response, and a
    different layout gives a different image."""
    from oncoplan.tace.dynamics import layouts

    rng = np.random.default_rng(0)
    protocols = rng.integers(0, 2, size=(300, len(ACTION_BASE))).astype(float)
    cisplatin, lipiodol = ACTION_BASE.index("Cisplatin"), ACTION_BASE.index("Lipiodol")
    viable = 0.6 - 0.3 * protocols[:, lipiodol] - 0.1 * protocols[:, cisplatin]
    responses = np.c_[viable, 0.8 - viable, 0.2 * np.ones(300), 1.0 - 0.2 * protocols[:, lipiodol]]
    net = _perturbed()
    assert net.response_head.fit(protocols, responses, alpha=1e-6) == pytest.approx(1.0)
    predicted = net.response(torch.tensor([multi_hot("Cisplatin; Lipiodol"), multi_hot("Idarubicin; PVA")]))
    assert predicted[0, 0] < predicted[1, 0]  # Lipiodol and Cisplatin leave less viable tumor
    assert torch.allclose(predicted[:, :3].sum(1), torch.ones(2))  # shares renormalised
    assert torch.allclose(net.response(torch.tensor([multi_hot("Lipiodol; Cisplatin")])), predicted[:1])

    x, pre, mask = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16)
    mask[:, :, 4:12, 4:12, 4:12] = 1.0
    layout = layouts(mask, predicted, samples=1)
    assert layout.shape == (2, 3, 16, 16, 16)
    assert layout[0, 0].sum() < layout[1, 0].sum()  # fewer viable voxels drawn for the better protocol
    t = torch.tensor([50, 50])
    with torch.no_grad():  # same noise and scan, two layouts
        out = net(
            torch.cat(
                [
                    x.expand(2, -1, -1, -1, -1),
                    condition(pre.expand(2, -1, -1, -1, -1), mask.expand(2, -1, -1, -1, -1), layout),
                ],
                1,
            ),
            t,
        )
        again = net(torch.cat([x, condition(pre, mask, layout[1:])], 1), t[:1])
    assert (out[0] - out[1]).abs().mean() > 1e-4
    assert torch.allclose(out[1:], again, atol=1e-5)


def test_the_layout_draws_the_response_it_is_given() -> None:
    """The layout's label map has the response's shares and volume ratio (to rounding), the rim viable
    and the core Lipiodol; a sample seed moves the boundaries, the same seed repeats them."""
    from oncoplan.tace.labels import LABELS, lesion_response
    from oncoplan.tace.layout import lesion_layout

    mask = np.zeros((24, 24, 24))
    mask[4:20, 5:19, 6:18] = 1.0
    pre = np.where(mask > 0, LABELS["viable"], 0)
    for response in ([0.5, 0.3, 0.2, 0.8], [0.1, 0.9, 0.0, 0.6], [1.0, 0.0, 0.0, 1.0]):
        drawn = lesion_layout(mask, response, np.random.default_rng(0))
        assert lesion_response(pre, drawn) == pytest.approx(response, abs=2e-3)
        assert not drawn[mask == 0].any()
    drawn = lesion_layout(mask, [0.4, 0.3, 0.3, 0.9], np.random.default_rng(1))
    depth = __import__("scipy").ndimage.distance_transform_edt(mask)
    assert depth[drawn == LABELS["viable"]].mean() < depth[drawn == LABELS["lipiodol"]].mean()
    again = lesion_layout(mask, [0.4, 0.3, 0.3, 0.9], np.random.default_rng(1))
    other = lesion_layout(mask, [0.4, 0.3, 0.3, 0.9], np.random.default_rng(2))
    assert np.array_equal(drawn, again) and not np.array_equal(drawn, other)
    assert not lesion_layout(np.zeros((4, 4, 4)), [0.5, 0.5, 0.0, 1.0], np.random.default_rng(0)).any()


def test_every_drawn_layout_holds_the_viable_voxels_the_layout_read_out_counts() -> None:
    """The planner's layout read-out counts viable voxels without drawing the layouts (`layout_viable_voxels`):
    the count equals the drawn one for any response and seed, Lipiodol overwriting viable where both reach."""
    from oncoplan.tace.labels import LABELS
    from oncoplan.tace.layout import layout_viable_voxels, lesion_layout

    grid = np.indices((12, 12, 12)).astype(float)
    mask = ((grid - 5.5) ** 2).sum(0) <= 20.0
    rng = np.random.default_rng(7)
    responses = [rng.uniform(0, 1, 4) for _ in range(40)]
    responses += [np.array([0.7, 0.0, 0.6, 0.8]), np.array([0.3, 0.3, 0.4, 0.0]), np.array([1.0, 0.0, 0.0, 1.4])]
    for response in responses:
        expected = layout_viable_voxels(int(mask.sum()), response)
        for seed in (0, 1):
            drawn = lesion_layout(mask, response, np.random.default_rng(seed))
            assert int((drawn == LABELS["viable"]).sum()) == expected
    assert layout_viable_voxels(0, [0.5, 0.2, 0.3, 1.0]) == 0


def test_lesion_response_and_the_training_items_carry_it(prepared_liver: Path) -> None:
    """Shares of the post-treatment lesion and its volume over the pre-treatment lesion, read from
    registered label maps; every dynamics training item carries it beside its protocol."""
    from oncoplan.tace.labels import LABELS, lesion_response
    from oncoplan.training.tace.data import dynamics_items

    pre = np.zeros((10, 10, 10), np.uint8)
    pre[2:7, 2:6, 2:6] = LABELS["viable"]  # 80 voxels
    post = np.zeros_like(pre)
    post[2:4, 2:6, 2:6] = LABELS["viable"]  # 32
    post[4:5, 2:6, 2:6] = LABELS["necrosis"]  # 16
    post[5:6, 2:6, 2:4] = LABELS["lipiodol"]  # 8
    assert lesion_response(pre, post) == pytest.approx([32 / 56, 16 / 56, 8 / 56, 56 / 80])
    assert lesion_response(pre, np.zeros_like(pre)) == [0.0, 0.0, 0.0, 0.0]

    items = dynamics_items(prepared_liver)
    assert items and all(len(i["response"]) == 4 and sum(i["response"][:3]) == pytest.approx(1.0) for i in items)


def test_warm_start_keeps_matching_weights_and_widens_the_input(tmp_path: Path) -> None:
    """A checkpoint with fewer input conditions: shared tensors copied, the input conv's old channels
    copied and its new ones zeroed, so the warm-started network starts as the old one."""
    from oncoplan.runtime.bundles import compatible_weights

    source = _perturbed(1)
    state = source.state_dict()
    conv = next(k for k in state if k.startswith("unet.conv_in") and k.endswith("weight"))
    state[conv] = state[conv][:, :3].clone()  # an older network saw only noisy image, pre and mask
    del state["response_head.weights"]
    torch.save({"model": state}, tmp_path / "old.pt")
    net = compatible_weights(_perturbed(2), str(tmp_path / "old.pt"))
    loaded = net.state_dict()
    assert torch.equal(loaded[conv][:, :3], state[conv]) and torch.count_nonzero(loaded[conv][:, 3:]) == 0
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != conv)


def test_checkpoint_saver_keeps_the_lowest_noise_loss() -> None:
    """The key metric is an error (lower is better); ignite's saver ranks higher-is-better unless told."""
    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    saver = next(h for h in config["validate"]["handlers"] if h["_target_"] == "CheckpointSaver")
    assert "val_velocity_l1" in config["validate"]["key_metric"]
    assert saver["key_metric_negative_sign"] is True


def test_noise_schedule_ends_in_noise_as_sampling_starts() -> None:
    """DDIM sampling starts from pure Gaussian noise, so training's last timestep must have destroyed the
    image: with 200 steps of these betas 41% of the signal was left, and every simulation was off by
    ~150 HU everywhere. Training and sampling must also share one schedule."""
    from monai.bundle import ConfigParser

    parsed = {}
    for name, key in (("train.json", "scheduler"), ("inference.json", "sampler")):
        parser = ConfigParser()
        parser.read_config(BUNDLE / "configs" / name)
        parsed[name] = parser.get_parsed_content(key)
    train, sample = parsed["train.json"], parsed["inference.json"]
    assert float(train.alphas_cumprod[-1].sqrt()) < 0.05
    assert train.num_train_timesteps == sample.num_train_timesteps
    assert torch.allclose(train.alphas_cumprod, sample.alphas_cumprod)


def test_anchor_paints_the_layout_and_starts_where_its_strength_says() -> None:
    """The anchored start (SDEdit): the lesion painted at its compartments' levels (the ring's liver
    where it shrank away, the pre-treatment patch elsewhere), noised to the step where `strength` of
    the schedule remains; strength 1 is plain sampling from the noise."""
    from monai.bundle import ConfigParser

    from oncoplan.tace.dynamics import Anchor

    pre = torch.full((1, 1, 12, 12, 12), 0.2)
    pre[..., 0, 0, 0] = -1.0  # outside the ring: not the liver's level
    mask = torch.zeros_like(pre)
    mask[..., 3:9, 3:9, 3:9] = 1.0
    layout = torch.zeros(2, 3, 12, 12, 12)
    layout[0, 0, 3:5, 3:9, 3:9] = 1.0  # viable rim of sample 0
    layout[1, 2, 4:8, 4:8, 4:8] = 1.0  # Lipiodol core of sample 1
    anchor = Anchor(0.4, levels_hu=(80.0, 41.0, 368.0))
    image = anchor.image(pre, mask, layout)
    assert image.shape == (2, 1, 12, 12, 12)
    assert torch.allclose(image[0, 0, 3, 5, 5], torch.tensor((80.0 + 175.0) / 387.5 - 1.0))
    assert torch.allclose(image[1, 0, 5, 5, 5], torch.tensor((368.0 + 175.0) / 387.5 - 1.0))
    assert float(image[0, 0, 7, 5, 5]) == pytest.approx(0.2)  # shrank away: the liver around it
    assert float(image[1, 0, 0, 0, 0]) == -1.0  # outside the lesion: the pre-treatment patch
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    sampler = parser.get_parsed_content("sampler")
    sampler.set_timesteps(25)
    noise = torch.randn_like(image)
    start, timesteps = anchor.start(sampler, noise, pre, mask, layout)
    assert len(timesteps) == 10 and int(timesteps[0]) == int(sampler.timesteps[15])
    assert 0.0 < float(torch.corrcoef(torch.stack([start.flatten(), image.flatten()]))[0, 1]) < 1.0
    start, timesteps = Anchor().start(sampler, noise, pre, mask, layout)
    assert start is noise and len(timesteps) == 25
    assert parser.get_parsed_content("anchor").strength == 1.0  # shipped: plain sampling
    with pytest.raises(ValueError, match="strength"):
        Anchor(0.0)


def test_training_weights_the_lesion_and_drops_the_protocol_for_guidance() -> None:
    """The training target carries a loss weight of 1 + lesion_weight inside the tumor mask, the loss
    applies it, and condition dropout zeroes exactly the response channels of the dropped samples."""
    from monai.networks.schedulers import DDPMScheduler

    from oncoplan.tace.dynamics import LesionWeightedL1, LesionWeightedVPrediction

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    pre, mask = torch.rand(2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8)
    mask[:, :, 2:5, 2:5, 2:5] = 1.0
    layout = torch.ones(2, 3, 8, 8, 8)  # every compartment channel non-zero, right after the two image conditions
    batch = {"image": torch.rand(2, 1, 8, 8, 8), "condition": condition(pre, mask, layout)}

    kept = LesionWeightedVPrediction(scheduler, 1000, "condition", lesion_weight=3.0, condition_dropout=0.0)
    _, target, _, kwargs = kept(batch)
    assert target.shape == (2, 2, 8, 8, 8)
    assert torch.equal(target[:, 1:2], 1.0 + 3.0 * mask)
    assert torch.equal(kwargs["condition"], batch["condition"])

    dropped = LesionWeightedVPrediction(scheduler, 1000, "condition", lesion_weight=3.0, condition_dropout=1.0)
    _, _, _, kwargs = dropped(batch)
    assert torch.count_nonzero(kwargs["condition"][:, 2:]) == 0  # every compartment channel
    assert torch.equal(kwargs["condition"][:, :2], batch["condition"][:, :2])  # pre and mask kept

    pred = torch.zeros(2, 1, 8, 8, 8)
    value = torch.zeros(2, 1, 8, 8, 8)
    value[mask > 0] = 1.0  # error 1 in the lesion (27 voxels of 512), 0 elsewhere
    weighted = LesionWeightedL1()(pred, torch.cat([value, 1.0 + 3.0 * mask], 1))
    assert weighted.item() == pytest.approx(4 * 27 / (512 + 3 * 27))
    plain = LesionWeightedL1()(pred, torch.cat([value, torch.ones_like(mask)], 1))
    assert plain.item() == pytest.approx(torch.nn.functional.l1_loss(pred, value).item())


def test_guidance_extrapolates_from_the_null_layout() -> None:
    """Classifier-free guidance: scale 1 is the conditional network itself; scale s is
    null + s * (given - null), the null being every compartment channel zero."""
    from oncoplan.tace.dynamics import ConditionGuidance

    net = _perturbed()
    x = torch.randn(2, 1, 16, 16, 16)
    layout = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    given = torch.cat([x, condition(torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16), layout)], 1)
    null = given.clone()
    null[:, 3:] = 0.0
    t = torch.tensor([400])
    with torch.no_grad():
        f_given, f_null = net(given, t), net(null, t)
        assert torch.allclose(ConditionGuidance(net, 1.0)(given, t), f_given, atol=1e-5)
        assert torch.allclose(ConditionGuidance(net, 3.0)(given, t), f_null + 3.0 * (f_given - f_null), atol=1e-4)


def test_validation_draws_the_same_noise_every_run_and_training_keeps_the_latest_weights() -> None:
    """Validation compares weights, not draws: batch k of every validation run gets the same noise and
    timesteps. Training also keeps its latest and final weights, not only the best validation."""
    from monai.networks.schedulers import DDPMScheduler

    from oncoplan.tace.dynamics import FixedNoiseVPrediction

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    prepare = FixedNoiseVPrediction(scheduler, 1000, "condition", cycle=2)
    batch = {"image": torch.rand(3, 1, 8, 8, 8), "condition": torch.rand(3, 5, 8, 8, 8)}
    first, second, again = prepare(batch), prepare(batch), prepare(batch)
    assert torch.equal(first[1], again[1]) and torch.equal(first[3]["timesteps"], again[3]["timesteps"])
    assert not torch.equal(first[1], second[1])

    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert config["val_prepare_batch"]["_target_"].endswith("FixedNoiseVPrediction")
    assert not any(t["_target_"].startswith("Rand") for t in config["val_patch_sampling"])
    savers = [h for h in config["train"]["handlers"] if h["_target_"] == "CheckpointSaver"]
    assert savers and savers[0]["save_final"] is True


def test_response_probe_fits_the_protocol_effect_and_scores_it_like_the_dynamics_model(prepared_liver: Path) -> None:
    """The reference probe: a ridge regression recovers a linear protocol effect, and runs end to end on a
    prepared synthetic cohort (its training pairs come from the post-treatment label maps)."""
    from oncoplan.tace.dynamics import fit_ridge
    from oncoplan.training.tace import response_probe

    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(200, len(ACTION_BASE))).astype(float)
    true = rng.normal(size=len(ACTION_BASE))
    w = fit_ridge(x, x @ true + 0.3, alpha=1e-6)
    assert np.allclose(w[:-1], true, atol=1e-4) and w[-1] == pytest.approx(0.3, abs=1e-4)

    features, target = response_probe.training_pairs([prepared_liver])
    assert features.shape == (len(target), len(ACTION_BASE)) and np.all((target >= 0) & (target <= 1))
    report = response_probe.score(fit_ridge(features, target), prepared_liver, k=4)
    assert report["n_cases"] == len(target)
    assert -1.0 <= report["spearman_mean"][0] <= 1.0

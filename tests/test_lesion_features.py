"""The world model reads the pre-treatment scan: lesion features of both phases, a response head that
conditions each protocol's response on them, and the arterial phase brought onto the planning grid."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from oncoplan.operators.ct_volume import from_datasets, on_grid_of
from oncoplan.tace.dynamics import MIN_VIABLE, ResponseConditionedUNet, ResponseHead, fit_ridge
from oncoplan.tace.labels import LABELS
from oncoplan.tace.layout import lesion_layout
from oncoplan.tace.lesion_features import FEATURES, lesion_features, study_features

from .helpers import cohort_rows


def _phantom(tumour_value: float, texture: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    volume = np.full((24, 24, 24), 0.1, dtype=np.float32) + rng.normal(0, 0.01, (24, 24, 24)).astype(np.float32)
    zz, yy, xx = np.mgrid[:24, :24, :24]
    mask = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 36
    volume[mask] = tumour_value + rng.normal(0, texture, mask.sum())
    return volume, mask


def test_features_follow_enhancement_washout_and_texture_and_a_missing_phase_is_nan() -> None:
    bright, mask = _phantom(0.4, 0.02)
    dim, _ = _phantom(0.2, 0.02)
    rough, _ = _phantom(0.2, 0.08)
    hyper = lesion_features(dim, bright, mask)
    hypo = lesion_features(dim, dim, mask)
    assert hyper[0] > hypo[0] > 0  # arterial enhancement against the ring around the tumour
    assert lesion_features(rough, dim, mask)[3] > lesion_features(dim, dim, mask)[3]  # portal-venous texture
    alone = lesion_features(dim, None, mask)
    assert np.isnan(alone[[0, 2]]).all() and np.isfinite(alone[[1, 3]]).all()
    # A study planned on its arterial phase (no portal-venous one): that series is the arterial reading.
    assert np.allclose(study_features(bright, mask, "AP"), lesion_features(None, bright, mask), equal_nan=True)
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_features(dim[:-1], None, mask)


def test_a_featured_response_head_changes_what_an_item_does_with_the_scan() -> None:
    """Item 0 kills more in lesions with a higher first feature (as an embolic in a vascular tumour): the
    head learns it; with no features, or NaN, it predicts for the average lesion."""
    rng = np.random.default_rng(0)
    n, actions = 400, 18
    protocols = (rng.random((n, actions)) < 0.3).astype(float)
    features = rng.normal(0.0, 1.0, (n, len(FEATURES)))
    viable = 0.6 - protocols[:, 0] * (0.2 + 0.1 * features[:, 0]) - 0.05 * protocols[:, 1]
    responses = np.c_[viable, 1 - viable, np.zeros(n), np.ones(n)]
    head = ResponseHead(actions, 4, len(FEATURES))
    assert head.fit(protocols, responses, features) > 0.99
    one = torch.zeros(1, actions)
    one[0, 0] = 1.0
    vascular, avascular = (np.array([v, 0.0, 0.0, 0.0]) for v in (1.5, -1.5))
    assert head(one, vascular)[0, 0] < head(one, avascular)[0, 0] - 0.2
    mean = features.mean(0)
    assert torch.allclose(head(one, None), head(one, mean), atol=1e-5)
    assert torch.allclose(head(one, np.full(4, np.nan)), head(one, None))
    with pytest.raises(ValueError, match="lesion features"):
        head.fit(protocols, responses)
    # The population head (no features) is the one every earlier checkpoint holds.
    net = ResponseConditionedUNet(channels=(16, 16, 16), norm_num_groups=8)
    assert net.response_head.weights.shape == (actions + 1, 4)


def test_a_log_response_head_combines_items_as_independent_hits() -> None:
    """Two items that each leave half the tumour viable leave a quarter together: a log head fitted on
    single items and pairs predicts it; a linear head, adding their effects, predicts (about) none. A log
    head's checkpoint does not load into a linear head."""
    rng = np.random.default_rng(1)
    n, actions = 300, 6
    protocols = (rng.random((n, actions)) < 0.35).astype(float)
    viable = np.prod(np.where(protocols[:, :2] > 0, 0.5, 1.0), axis=1) * np.where(protocols[:, 2] > 0, 0.8, 1.0)
    responses = np.c_[viable, 0.7 * (1 - viable), 0.3 * (1 - viable), np.ones(n)]
    both = torch.zeros(1, actions)
    both[0, :2] = 1.0
    log_head, linear_head = ResponseHead(actions, 4, link="log"), ResponseHead(actions, 4)
    assert log_head.fit(protocols, responses, alpha=1e-6) > 0.99
    linear_head.fit(protocols, responses, alpha=1e-6)
    predicted = log_head(both)[0]
    assert predicted[0] == pytest.approx(0.25, abs=0.01)
    assert predicted[:3].sum() == pytest.approx(1.0, abs=1e-5)
    assert predicted[1] / predicted[2] == pytest.approx(0.7 / 0.3, rel=0.05)
    assert linear_head(both)[0, 0] < 0.2  # additive: 1 - 0.5 - 0.5, clipped
    with pytest.raises(RuntimeError, match="log_residual_link"):
        linear_head.load_state_dict(log_head.state_dict())
    with pytest.raises(ValueError, match="link"):
        ResponseHead(actions, 4, link="logit")


def test_a_log_head_maps_the_residual_tumour_of_the_pre_treatment_lesion() -> None:
    """What multiplies is the viable tumour left of the lesion (viable share x volume ratio): fitted on lesions
    that shrink as they die, the log head's share times its ratio is that residual (a head mapping the share
    of the shrunken lesion predicts 0.21 here), and the layout paints it."""
    rng = np.random.default_rng(2)
    n, actions = 300, 6
    protocols = (rng.random((n, actions)) < 0.35).astype(float)
    residual = np.prod(np.where(protocols[:, :2] > 0, 0.5, 1.0), axis=1)
    ratio = 1.0 - 0.8 * (1.0 - residual)  # killed tissue shrinks
    responses = np.c_[residual / ratio, 0.8 * (1 - residual / ratio), 0.2 * (1 - residual / ratio), ratio]
    head = ResponseHead(actions, 4, link="log")
    assert head.fit(protocols, responses, alpha=1e-6) > 0.99
    both = torch.zeros(1, actions)
    both[0, :2] = 1.0
    predicted = head(both)[0]
    assert float(predicted[0] * predicted[3]) == pytest.approx(0.25, abs=0.01)  # whatever ratio it predicts
    mask = np.ones((20, 20, 20), dtype=bool)
    painted = lesion_layout(mask, predicted.tolist(), np.random.default_rng(0))
    assert (painted == LABELS["viable"]).sum() / mask.sum() == pytest.approx(0.25, abs=0.01)


def test_item_pairs_let_the_head_learn_what_one_item_does_to_another() -> None:
    """Item 2 (as Lipiodol carrying a drug) doubles item 0's kill and does nothing alone: only a head that reads
    item pairs predicts both the pair and each item alone; its checkpoint does not load into a head without."""
    rng = np.random.default_rng(3)
    n, actions = 400, 6
    protocols = (rng.random((n, actions)) < 0.4).astype(float)
    kill = 0.2 * (1.0 + protocols[:, 2]) * protocols[:, 0]
    residual = (1.0 - kill) * np.where(protocols[:, 1] > 0, 0.7, 1.0)
    responses = np.c_[residual, 1.0 - residual, np.zeros(n), np.ones(n)]
    paired, plain = ResponseHead(actions, 4, link="log", item_pairs=True), ResponseHead(actions, 4, link="log")
    assert paired.fit(protocols, responses, alpha=1e-6) > 0.99
    plain.fit(protocols, responses, alpha=1e-6)
    rows = torch.zeros(3, actions)
    rows[0, 0] = rows[1, 2] = rows[2, 0] = rows[2, 2] = 1.0  # item 0, item 2, both
    assert paired(rows)[:, 0].numpy() == pytest.approx([0.8, 1.0, 0.6], abs=0.01)
    assert abs(float(plain(rows)[2, 0]) - 0.6) > 0.03  # a sum of single-item effects misses the pair
    with pytest.raises(RuntimeError, match="size mismatch"):
        plain.load_state_dict(paired.state_dict())


def test_the_items_own_effects_are_not_shrunk_when_only_the_interactions_are_penalised() -> None:
    """A strong penalty shrinks every weight towards "the item does nothing"; with `alpha_items` small, each
    item's own effect is kept (few cases, one feature that does nothing) and the intercept is not penalised."""
    rng = np.random.default_rng(4)
    n, actions = 60, 6
    protocols = (rng.random((n, actions)) < 0.2).astype(float)
    features = rng.normal(0.0, 1.0, (n, len(FEATURES)))
    residual = np.where(protocols[:, 0] > 0, 0.3, 1.0) * 0.9
    responses = np.c_[residual, 1.0 - residual, np.zeros(n), np.ones(n)]
    one = torch.zeros(1, actions)
    one[0, 0] = 1.0
    shrunk, kept = ResponseHead(actions, 4, len(FEATURES), "log"), ResponseHead(actions, 4, len(FEATURES), "log")
    shrunk.fit(protocols, responses, features, alpha=30.0)
    # Without alpha_items, every weight and the intercept take alpha: the ridge the shipped heads were fitted by.
    target = np.c_[np.log(np.clip(residual, MIN_VIABLE, 1.0)), responses[:, 1:]]
    expected = fit_ridge(shrunk.design(protocols, features), target, 30.0).astype(np.float32)
    assert np.array_equal(shrunk.weights.numpy(), expected)
    with pytest.raises(ValueError, match="alpha_items must be > 0"):
        kept.fit(protocols, responses, features, alpha=30.0, alpha_items=0.0)
    kept.fit(protocols, responses, features, alpha=30.0, alpha_items=1e-3)
    assert float(kept(one)[0, 0]) == pytest.approx(0.27, abs=0.01)
    assert float(shrunk(one)[0, 0]) > 0.4
    assert float(kept(torch.zeros(1, actions))[0, 0]) == pytest.approx(0.9, abs=0.01)


def test_texture_is_read_in_the_tumours_core_not_its_partial_volume_rim() -> None:
    """Two tumours alike inside, one with a brighter rim (a partial-volume blend with enhancing liver): the
    same texture; the rim still counts for the enhancement."""
    volume, mask = _phantom(0.2, 0.02)
    rimmed = volume.copy()
    rim = mask & ~ndimage.binary_erosion(mask, iterations=1)
    rimmed[rim] += 0.3
    plain, blended = lesion_features(volume, volume, mask), lesion_features(rimmed, rimmed, mask)
    assert blended[[2, 3]] == pytest.approx(plain[[2, 3]], abs=1e-6)
    assert blended[0] > plain[0]


def test_the_arterial_phase_lands_on_the_planning_grid_by_position(liver2_cohort: Path) -> None:
    row = next(r for r in cohort_rows(liver2_cohort) if r["pre_AP_series"] and r["pre_PVP_series"])
    read = lambda key: [pydicom.dcmread(f) for f in sorted((liver2_cohort / row[key]).glob("*.dcm"))]  # noqa: E731
    arterial, portal = from_datasets(read("pre_AP_series"), "AP"), from_datasets(read("pre_PVP_series"), "PVP")
    assert np.allclose(on_grid_of(arterial, portal).hu, arterial.hu, atol=1e-3)  # one grid: unchanged
    # The arterial series one slice further along: resampled back, the shared slices agree.
    shifted = []
    step = np.asarray(arterial.datasets[1].ImagePositionPatient, float) - np.asarray(
        arterial.datasets[0].ImagePositionPatient, float
    )
    for ds in arterial.datasets:
        moved = copy.deepcopy(ds)
        moved.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + step]
        shifted.append(moved)
    back = on_grid_of(from_datasets(shifted, "AP shifted"), portal).hu
    assert np.allclose(back[1:], arterial.hu[:-1], atol=1e-2)
    assert (back[0] == -1024.0).all()  # outside the arterial series


def test_the_visible_biology_study_refuses_what_it_cannot_measure(liver_cohort: Path, liver2_cohort: Path) -> None:
    """liver-1 images show nothing to read back; two cases cannot be cross-validated: one line each, exit 2."""
    from oncoplan.errors import InputError
    from oncoplan.training.tace.visible_biology import main, measure

    with pytest.raises(InputError, match="generator 'liver-1'; this study needs liver-2 or liver-3 cohorts"):
        measure([liver_cohort], progress=False)
    assert main(["--cohort", str(liver2_cohort), "--out", str(liver2_cohort.parent / "vb")]) == 2
    assert not (liver2_cohort.parent / "vb").exists()


def test_refitting_the_response_head_needs_enough_training_cases(prepared_liver: Path, tmp_path: Path) -> None:
    from oncoplan.training.tace.refit_response_head import main

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "tace_dynamics"
    args = ["--bundle", str(bundle), "--train", str(prepared_liver), "--response-features", "4"]
    assert main([*args, "--out", str(tmp_path / "m.pt")]) == 2
    assert not (tmp_path / "m.pt").exists()

"""Every config of the TACE assistant bundle runs with `python -m monai.bundle run` (tiny sizes); the
tumor synthesis and the liver constraint behave. The checks every bundle passes (metadata, the 2-rank gloo
run, the TensorRT fallback) are in tests/test_bundles.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from oncoplan.tace.transforms import KeepTumorInLiverd, SynthesizeTumord

from .bundle_harness import ASSISTANT, Paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> Paths:
    return ASSISTANT.trained(request)


def test_train_pretrains_then_fine_tunes(trained: Paths) -> None:
    assert (trained["models"] / "model.pt").stat().st_size > 0
    for curve in ("pretraining_curve", "training_curve"):
        assert (trained["tmp"] / "eval" / f"{curve}.png").exists()


def test_inference_writes_one_label_map_per_case_on_its_grid(trained: Paths) -> None:
    import nibabel as nib

    ASSISTANT.run_inference(trained, "pred", "inference.json")
    preds = sorted((trained["tmp"] / "pred").rglob("*_liver_tumor.nii.gz"))
    assert len(preds) == 2, preds
    case = preds[0].parent.name
    image = nib.load(trained["data"] / case / "post_image.nii.gz")
    pred = nib.load(preds[0])
    assert pred.shape[:3] == image.shape and abs(pred.affine - image.affine).max() < 1e-3
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3, 4}


def test_evaluate_writes_dice_with_cis(trained: Paths) -> None:
    ASSISTANT.run_inference(trained, "pred", "inference.json", "evaluate.json")
    report = json.loads((trained["tmp"] / "pred" / "assistant_evaluation.json").read_text())
    assert report["n"] == 2
    for metric in ("liver_dice", "tumor_dice", "viable_dice"):
        mean, lo, hi = report["summary"][metric]
        assert 0.0 <= lo <= mean <= hi <= 1.0


def _liver_phantom() -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.zeros(1, 48, 48, 48)
    zz, yy, xx = torch.meshgrid(*[torch.arange(48.0)] * 3, indexing="ij")
    label[0][((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2) < 20**2] = 1
    image = torch.where(label > 0, 110.0, -100.0) + torch.randn(1, 48, 48, 48) * 8
    return image, label


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_tumor_lies_in_the_liver_and_is_labelled(seed: int) -> None:
    image, label = _liver_phantom()
    synth = SynthesizeTumord(prob=1.0, size_probs=(0.0, 0.5, 0.5, 0.0))
    synth.set_random_state(seed)
    out = synth({"image": image, "label": label})
    new = out["label"][0].numpy()
    tumor = new >= 2
    assert tumor.sum() > 20
    assert (label[0].numpy()[tumor] == 1).all(), "tumor placed outside the liver"
    changed = out["image"][0].numpy()[tumor] - image[0].numpy()[tumor]
    assert np.abs(changed).mean() > 10.0, "the tumor is invisible in the image"


def test_tumor_outside_the_liver_is_removed() -> None:
    pred = torch.zeros(1, 20, 20, 20)
    pred[0, 2:10, 2:10, 2:10] = 1
    pred[0, 4:6, 4:6, 4:6] = 2  # inside the liver: kept
    pred[0, 15:18, 15:18, 15:18] = 2  # a detached blob: removed
    out = KeepTumorInLiverd("pred")({"pred": pred})["pred"]
    assert int((out == 2).sum()) == 8 and int((out[0, 15:18, 15:18, 15:18] > 0).sum()) == 0


def test_train_config_can_start_from_earlier_weights(tmp_path: Path) -> None:
    """`init_ckpt` loads a CheckpointSaver file into the network before training; null starts fresh."""
    from oncoplan.runtime.bundles import initial_weights

    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"model": first.state_dict()}, tmp_path / "model.pt")
    assert initial_weights(second, None) is second and not torch.equal(second.weight, first.weight)
    assert torch.equal(initial_weights(second, tmp_path / "model.pt").weight, first.weight)

"""The box-restricted resampling onto the CT grid gives the same mask as MONAI's full inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Invertd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from oncoplan.runtime.grid import linear_mask_onto, support_box


def _ct(shape=(96, 80, 30)) -> MetaTensor:
    """A channel-less CT in LPS-like index order (x flipped, y flipped): Orientationd has work to do."""
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [40.0, 30.0, -20.0]
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 30, shape).astype(np.float32)
    hu[:, 8:-8, :] += 400  # a body for CropForeground to find, wall to wall in x (the border case)
    return MetaTensor(hu, affine=torch.as_tensor(affine), meta={"space": "RAS", "original_channel_dim": "no_channel"})


PIPELINE = Compose(
    [
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=(2.0, 2.0, 3.0), mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 0.6, margin=2, allow_smaller=True),
    ]
)


def _prob(model_image: MetaTensor, centre: tuple[float, ...], radius: float) -> MetaTensor:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in model_image.shape[1:]], indexing="ij"))
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    prob = torch.as_tensor(1 / (1 + np.exp((d - radius) * 1.3)), dtype=torch.float32)[None]
    out = MetaTensor(prob, meta=model_image.meta)
    out.applied_operations = model_image.applied_operations
    return out


@pytest.mark.parametrize("where", ["inside", "on the border"])
def test_mask_matches_full_inversion(where: str) -> None:
    image = _ct()
    data = PIPELINE({"image": image.clone()})
    model = data["image"]
    centre = tuple(n / 2 for n in model.shape[1:]) if where == "inside" else (0.0, model.shape[2] / 2, 1.0)
    prob = _prob(model, centre, radius=4.0)
    full = Invertd(keys="pred", transform=PIPELINE, orig_keys="image", nearest_interp=False)
    expected = np.asarray(full({"pred": prob, "image": model})["pred"][0]) > 0.5
    tail = Compose(PIPELINE.transforms[3:])  # everything after Spacingd, undone by MONAI on the model grid
    undo_tail = Invertd(keys="pred", transform=tail, orig_keys="image", nearest_interp=False)
    undone = undo_tail({"pred": prob, "image": model})
    got = linear_mask_onto(undone["pred"], np.asarray(image.affine), tuple(image.shape))
    assert got.shape == expected.shape == tuple(image.shape)
    assert expected.sum() > 50
    # equal up to voxels whose interpolated value is 0.5 within float rounding
    assert np.count_nonzero(got != expected) <= 1e-5 * got.size


def test_empty_support_gives_an_empty_mask() -> None:
    image = _ct()
    model = PIPELINE({"image": image.clone()})["image"]
    prob = _prob(model, (5.0, 5.0, 5.0), radius=-10.0)  # nowhere above 0.5
    undone = Invertd(keys="pred", transform=Compose(PIPELINE.transforms[3:]), orig_keys="image")(
        {"pred": prob, "image": model}
    )
    assert not linear_mask_onto(undone["pred"], np.asarray(image.affine), tuple(image.shape)).any()


def test_support_box_maps_and_clips() -> None:
    to_target = np.diag([2.0, 2.0, 1.0, 1.0])
    box = support_box(np.array([3, 3, 0]), np.array([4, 4, 0]), to_target, (20, 20, 5), reach=1.0)
    assert box == (slice(4, 11), slice(4, 11), slice(0, 2))
    assert support_box(np.array([30, 30, 30]), np.array([31, 31, 31]), to_target, (20, 20, 5), reach=0.5) is None

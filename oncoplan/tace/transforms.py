"""MONAI transforms of the TACE assistant model: DiffTumor-style tumor synthesis and liver-constrained output.

`SynthesizeTumord` follows the recipe the MeWM seed (B.3) cites (Chen et al., DiffTumor, and
Hu et al.'s label-free synthesis): an ellipsoid with random axes, elastically deformed, placed
in tumor-free liver tissue, textured from the surrounding liver, in four size classes (radii
about 4, 8, 16 and 32 voxels at the model's spacing). Our synthetic tumors may also carry the
post-TACE look (necrotic core, dense Lipiodol deposits), so the pre-trained model has seen
every class it must segment after treatment. It runs on HU images, before intensity scaling.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

from oncoplan.tace.labels import LABELS, TUMOR_LABELS

SIZE_CLASSES_VOXELS: tuple[tuple[float, float], ...] = ((3.0, 5.0), (6.0, 10.0), (12.0, 20.0), (24.0, 36.0))


class SynthesizeTumord(RandomizableTransform, MapTransform):
    """Place one synthetic tumor in the liver (label == liver, channel-first HU image and label).

    size_probs: probability of each of `SIZE_CLASSES_VOXELS` (tiny, small, medium, large).
    treated_prob: chance the tumor looks treated (necrotic core, maybe Lipiodol) rather than viable.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 0.5,
        size_probs: Sequence[float] = (0.25, 0.35, 0.3, 0.1),
        treated_prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = self.keys[0], self.keys[1]
        self.size_probs = np.asarray(size_probs, dtype=float) / float(np.sum(size_probs))
        self.treated_prob = treated_prob

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image, label = d[self.image_key], d[self.label_key]
        img = np.asarray(image[0].detach().cpu() if isinstance(image, torch.Tensor) else image[0], dtype=np.float32)
        lab = np.asarray(label[0].detach().cpu() if isinstance(label, torch.Tensor) else label[0]).astype(np.uint8)
        placed = self._place(img, lab)
        if placed is None:
            return d
        new_img, new_lab = placed
        d[self.image_key] = _like(image, new_img[None])
        d[self.label_key] = _like(label, new_lab[None])
        return d

    def _place(self, img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        liver = lab == LABELS["liver"]
        if liver.sum() < 50:
            return None
        lo, hi = SIZE_CLASSES_VOXELS[int(self.R.choice(len(SIZE_CLASSES_VOXELS), p=self.size_probs))]
        # Keep the tumor inside the liver: no radius larger than the liver's inscribed depth allows.
        depth = ndimage.distance_transform_edt(liver)
        radius = min(float(self.R.uniform(lo, hi)), float(depth.max()) * 0.9)
        if radius < 1.5:
            return None
        centres = np.argwhere(depth >= min(radius * 0.6, depth.max()))
        centre = centres[int(self.R.randint(len(centres)))]
        mask = self._ellipsoid(img.shape, centre, radius) & (lab > 0)
        mask &= ~np.isin(lab, TUMOR_LABELS)
        if mask.sum() < 8:
            return None
        return self._texture(img, lab, mask, liver)

    def _ellipsoid(self, shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
        """Ellipsoid with random axes and orientation, elastically deformed, in a box around `centre`."""
        half = int(np.ceil(radius * 1.6)) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        p = grid.astype(np.float32) - centre.astype(np.float32)
        q, _ = np.linalg.qr(self.R.normal(size=(3, 3)))
        axes = radius * self.R.uniform(0.75, 1.25, 3)
        r = np.sqrt((((p @ q) / axes) ** 2).sum(-1))
        # Elastic deformation of the boundary: smooth random field, a fifth of the radius at most.
        noise = ndimage.gaussian_filter(self.R.normal(size=r.shape), sigma=max(radius / 3.0, 1.0))
        noise /= max(float(np.abs(noise).max()), 1e-6)
        box = r <= 1.0 + 0.2 * noise
        mask = np.zeros(shape, dtype=bool)
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = box
        return mask

    def _texture(
        self, img: np.ndarray, lab: np.ndarray, mask: np.ndarray, liver: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        liver_hu = float(np.median(img[liver]))
        liver_sd = float(np.std(img[liver])) or 10.0
        out_img, out_lab = img.copy(), lab.copy()
        depth = ndimage.distance_transform_edt(mask)
        depth /= max(float(depth.max()), 1e-6)  # 0 at the rim, 1 at the core
        tumor_hu = np.full(img.shape, liver_hu + self.R.uniform(-45.0, 25.0), dtype=np.float32)
        label = np.full(img.shape, LABELS["viable"], dtype=np.uint8)
        if self.R.random() < self.treated_prob:
            core = depth > self.R.uniform(0.2, 0.7)
            tumor_hu[core] = self.R.uniform(10.0, 30.0)  # non-enhancing necrosis
            label[core] = LABELS["necrosis"]
            if self.R.random() < 0.6:
                dense = core & (depth > self.R.uniform(0.5, 0.9))
                tumor_hu[dense] = self.R.uniform(300.0, 600.0)  # Lipiodol deposits
                label[dense] = LABELS["lipiodol"]
        noise = self.R.normal(0.0, liver_sd, img.shape).astype(np.float32)
        # A soft edge (one voxel) so the boundary is not a step no scanner would produce.
        weight = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 0.7), 0, 1)
        blended = (1 - weight) * img + weight * (tumor_hu + noise)
        out_img[weight > 0.01] = blended[weight > 0.01]
        out_lab[mask] = label[mask]
        return out_img, out_lab


class KeepTumorInLiverd(MapTransform):
    """Remove tumor predicted outside the liver (seed B.3): keep the largest liver+tumor component.

    Works on a channel-first label map (argmax already taken); voxels of other components become background.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            arr = np.asarray(pred[0].detach().cpu() if isinstance(pred, torch.Tensor) else pred[0])
            d[key] = _like(pred, keep_largest_organ(arr)[None])
        return d


def keep_largest_organ(labels: np.ndarray) -> np.ndarray:
    """A spatial label map with only its largest liver+tumor component (others -> background)."""
    organ, count = ndimage.label(labels > 0)
    if count <= 1:
        return labels
    sizes = np.bincount(organ.ravel())
    sizes[0] = 0
    return np.where(organ == int(sizes.argmax()), labels, 0).astype(labels.dtype)


def _like(reference: object, array: np.ndarray) -> object:
    """`array` (same shape) in the container and dtype of `reference`; a MetaTensor keeps its meta data."""
    if isinstance(reference, torch.Tensor):
        out = reference.clone()
        out[...] = torch.as_tensor(array, dtype=reference.dtype)
        return out
    return array.astype(np.asarray(reference).dtype)

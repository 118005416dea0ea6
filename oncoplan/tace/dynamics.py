"""The dynamics model (MeWM seed B.2): post-treatment CT patch from the pre-treatment patch, the tumor
mask and the TACE protocol, in three steps that each do what they can learn or know.

1. **Response head** (protocol -> response): a ridge regression from the protocol's multi-hot vector
   to what treatment does to the lesion: the viable, necrosis and Lipiodol shares of the
   post-treatment lesion and its volume ratio to the pre-treatment one (`oncoplan.tace.labels.lesion_response`),
   fitted in closed form on the training cases' registered label maps when training starts.
2. **Layout** (response -> label map, `layout.lesion_layout`): a geometric prior places those
   shares in the pre-treatment mask (shrink from the rim, viable rim, Lipiodol core), perturbed per sample.
3. **Renderer** (label map -> image): a conditional DDPM on MONAI's `DiffusionModelUNet` that draws
   the post-treatment patch from the pre-treatment patch, the tumor mask and the post-treatment
   compartments (viable, necrosis, Lipiodol channels). It trains teacher-forced on each case's
   registered post-treatment label map.

Why not one protocol-conditioned denoiser, as MeWM: ours (protocol tokens by cross-attention and a
class embedding; bundle 0.1-0.3) learned the images but not the protocol on a CPU budget, ranking
protocols no better than chance (Spearman -0.04 over 24 held-out cases), while a ridge regression
on the same 240 cases ranked them at 0.89. Conditioning the denoiser on the four response numbers
instead (a vector, 10 epochs) moved its image estimate the right way but too little, and its samples
copied the pre-treatment lesion: in these scans the response shows mostly as *where* the lesion
shrank and what fills it, which a voxel-wise label map says and a vector does not. The protocol
still truly conditions the output (MeWM's released inference replaced it with noise).

The compartments travel inside the concatenated condition, so MONAI's stock `DiffusionPrepareBatch`,
`DiffusionInferer` (mode "concat") and `SupervisedTrainer` drive training and sampling unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.engines.utils import DiffusionPrepareBatch, VPredictionPrepareBatch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from oncoplan.tace.actions import ACTION_BASE, Protocol
from oncoplan.tace.layout import COMPARTMENTS, compartments, lesion_layout

IMAGE_CONDITIONS = 2  # pre-treatment patch, tumor mask
RESPONSE = ("viable share", "necrosis share", "Lipiodol share", "volume ratio")  # labels.lesion_response
LINKS = ("linear", "log")  # how a response head combines items on the viable share (ResponseHead)
MIN_VIABLE = 0.02  # the least viable share a log head predicts (a measured share of 0 has no log)
LOG = logging.getLogger(__name__)


def multi_hot(protocol: Protocol | str) -> list[float]:
    """The protocol as a multi-hot vector over `ACTION_BASE` (the order of every model's input)."""
    p = Protocol.parse(protocol) if isinstance(protocol, str) else protocol
    return [float(a in p.items) for a in ACTION_BASE]


def _design(features: np.ndarray) -> np.ndarray:
    """The features with an intercept column."""
    return np.c_[features, np.ones(len(features))]


def fit_ridge(
    features: np.ndarray, target: np.ndarray, alpha: float = 1e-2, penalty: np.ndarray | None = None
) -> np.ndarray:
    """Weights (features + intercept, x outputs) of a ridge regression: `alpha` on every weight, the intercept
    included, or `penalty`, one per weight (features, then the intercept)."""
    x = _design(features)
    diagonal = np.full(x.shape[1], alpha) if penalty is None else np.asarray(penalty, dtype=np.float64)
    return np.linalg.solve(x.T @ x + np.diag(diagonal), x.T @ target)


def predict(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    return _design(features) @ weights


class ResponseHead(nn.Module):
    """Multi-hot protocol (and what the pre-treatment scan shows of the lesion) -> (viable, necrosis, Lipiodol
    shares, volume ratio) of the treated lesion.

    A linear map with intercept held as buffers (saved in the checkpoint) and fitted by `fit`. With
    `n_features` > 0 it reads the lesion's :data:`oncoplan.tace.lesion_features.FEATURES` too: its inputs
    are the multi-hot vector and that vector times each standardised feature (so the scan changes what
    each item does, not only the baseline); a feature not given (NaN, or no features at all) counts as
    its training mean. With `item_pairs` it also reads each pair of items given together (the product of their
    multi-hot entries): what one item does to another's effect (Lipiodol carrying a drug into the tumour, beads
    eluting one), which no sum of single-item effects holds.

    `link` is how the viable share is predicted. "linear" (the shipped head): each item adds to the share;
    the shares come out clipped to >= 0 and renormalised to sum 1. "log": each item adds to the log of the
    residual viable tumour, i.e. multiplies it, as independent hits on the tumour do (a drug that kills 40%
    and an embolic that kills 60% leave 0.6 x 0.4 = 24%, where a linear head, fitted on one-item effects,
    predicts 0%). What it maps is the residual viable tumour as a share of the pre-treatment lesion (the
    measured viable share times the volume ratio, a ratio above 1 counted as 1), the quantity the hits
    multiply and the survival model prices; it comes out as the viable share of the treated lesion (that
    residual over the predicted volume ratio, at most 1), so the layout paints that residual (a residual above
    the predicted ratio paints the whole shrunken lesion viable: the ratio wins). The residual is
    exp of the map, in [MIN_VIABLE, 1], and the necrosis and Lipiodol shares share the rest in the proportion
    their linear maps give. A log head keeps a `log_residual_link` buffer, so its checkpoint
    does not load into a linear head, nor a linear one into it. The volume ratio is clipped to [0.1, 2].
    """

    def __init__(
        self,
        n_actions: int = len(ACTION_BASE),
        n_outputs: int = len(RESPONSE),
        n_features: int = 0,
        link: str = "linear",
        item_pairs: bool = False,
    ) -> None:
        super().__init__()
        if link not in LINKS:
            raise ValueError(f"response head link must be one of {LINKS}, got {link!r}")
        self.n_actions, self.n_features, self.link = n_actions, n_features, link
        self.pairs = np.triu_indices(n_actions, 1) if item_pairs else None
        self.n_pairs = 0 if self.pairs is None else len(self.pairs[0])
        self.register_buffer("weights", torch.zeros(n_actions * (1 + n_features) + self.n_pairs + 1, n_outputs))
        if link == "log":
            # Named for what it maps: a log head fitted before it mapped the residual (its buffer was
            # "log_link", its share of the shrunken lesion) fails to load rather than being read the new way.
            self.register_buffer("log_residual_link", torch.ones(1))
        if n_features:
            self.register_buffer("feature_mean", torch.zeros(n_features))
            self.register_buffer("feature_scale", torch.ones(n_features))

    def design(self, protocols: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The head's inputs (without the intercept): protocols (N, A), features (N, F), (F,) or None."""
        p = np.asarray(protocols, dtype=np.float64)
        pairs = np.zeros((len(p), 0)) if self.pairs is None else p[:, self.pairs[0]] * p[:, self.pairs[1]]
        if not self.n_features:
            return np.c_[p, pairs]
        z = np.zeros((len(p), self.n_features))
        if features is not None:
            f = np.broadcast_to(np.asarray(features, dtype=np.float64), z.shape)
            mean, scale = self.feature_mean.cpu().numpy(), self.feature_scale.cpu().numpy()
            z = np.nan_to_num((f - mean) / scale, nan=0.0)
        return np.c_[p, (p[:, :, None] * z[:, None, :]).reshape(len(p), -1), pairs]

    def fit(
        self,
        protocols: np.ndarray,
        responses: np.ndarray,
        features: np.ndarray | None = None,
        alpha: float = 1e-2,
        alpha_items: float | None = None,
        alpha_pairs: float | None = None,
    ) -> float:
        """Fit to training pairs (and the cases' lesion features); returns R^2 on them of the viable share (a
        linear head: its map before clipping) or, for a log head, of the residual (exp of its map, clipped as
        `forward` clips it).

        `alpha` is the ridge penalty. With `alpha_items` it is the penalty of the feature interactions only:
        each item's own effect takes `alpha_items` and the intercept none. Why: a ridge pulls an item's effect
        towards "does nothing", by n / (n + alpha) for an item seen in n cases; with a few hundred random
        protocols (about one case in six holds a given item) that shrinks every drug and embolic by a tenth or
        more, so the head under-rates strong protocols against their (true) toxicity. Without `alpha_items`
        every weight, the intercept included, takes `alpha` (how the shipped heads were fitted). `alpha_pairs`
        is the item pairs' penalty (default `alpha`)."""
        if self.n_features:
            if features is None:
                raise ValueError(f"this response head reads {self.n_features} lesion features; none were given")
            f = np.asarray(features, dtype=np.float64)
            mean = np.nanmean(f, axis=0)
            scale = np.nanstd(f, axis=0)
            self.feature_mean.copy_(torch.as_tensor(np.nan_to_num(mean), dtype=self.feature_mean.dtype))
            self.feature_scale.copy_(
                torch.as_tensor(np.where(scale > 1e-9, scale, 1.0), dtype=self.feature_scale.dtype)
            )
        x = self.design(protocols, features)
        target = np.array(responses, dtype=np.float64)
        viable = target[:, 0].copy()
        if self.link == "log":
            viable = viable * np.clip(target[:, 3], 0.0, 1.0)
            target[:, 0] = np.log(np.clip(viable, MIN_VIABLE, 1.0))
        for name, value in (("alpha", alpha), ("alpha_items", alpha_items), ("alpha_pairs", alpha_pairs)):
            if value is not None and not value > 0:
                # an item never given, or a pair never given together, leaves its column empty: no penalty, no fit
                raise ValueError(f"response head {name} must be > 0, got {value}")
        penalty = np.r_[
            np.full(self.n_actions, alpha if alpha_items is None else alpha_items),
            np.full(x.shape[1] - self.n_actions - self.n_pairs, alpha),
            np.full(self.n_pairs, alpha if alpha_pairs is None else alpha_pairs),
            alpha if alpha_items is None else 0.0,
        ]
        w = fit_ridge(x, target, alpha, penalty)
        self.weights.copy_(torch.as_tensor(w, dtype=self.weights.dtype))
        fitted = predict(w, x)[:, 0]
        if self.link == "log":
            fitted = np.clip(np.exp(fitted), MIN_VIABLE, 1.0)
        return 1.0 - float(((fitted - viable) ** 2).mean() / max(viable.var(), 1e-12))

    def forward(self, protocols: torch.Tensor, features: np.ndarray | None = None) -> torch.Tensor:
        p = protocols.float().to(self.weights.device)
        if self.n_features or self.n_pairs:
            x = torch.as_tensor(self.design(p.cpu().numpy(), features), dtype=p.dtype, device=p.device)
        else:
            x = p
        raw = torch.cat([x, torch.ones_like(p[:, :1])], 1) @ self.weights
        ratio = raw[:, 3:].clamp(0.1, 2.0)
        if self.link == "log":
            # the map is the residual share of the pre-treatment lesion; the layout wants it in the treated one
            viable = (raw[:, :1].exp().clamp(MIN_VIABLE, 1.0) / ratio.clamp(max=1.0)).clamp(max=1.0)
            rest = raw[:, 1:3].clamp(min=0.0)
            total = rest.sum(1, keepdim=True)
            # no killed tissue predicted as Lipiodol or necrosis: call it necrosis
            rest = torch.where(total > 1e-6, rest / total.clamp(min=1e-6), torch.tensor([1.0, 0.0]).to(rest))
            shares = torch.cat([viable, rest * (1.0 - viable)], 1)
        else:
            shares = raw[:, :3].clamp(min=0.0)
            shares = shares / shares.sum(1, keepdim=True).clamp(min=1e-6)
        return torch.cat([shares, ratio], 1)


class ResponseConditionedUNet(nn.Module):
    """The renderer, a `DiffusionModelUNet` whose input is [noisy post, pre, mask, viable, necrosis,
    Lipiodol], and the `ResponseHead` that turns protocols into responses (`response`), kept in one
    module so that one checkpoint holds both."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 16,
        norm_num_groups: int = 16,
        n_actions: int = len(ACTION_BASE),
        response_features: int = 0,
        response_link: str = "linear",
        response_item_pairs: bool = False,
    ) -> None:
        super().__init__()
        self.n_actions, self.n_response = n_actions, len(RESPONSE)
        # response_features: how many lesion features of the pre-treatment scan the response head reads
        # (0: a population model of each protocol; 4: oncoplan.tace.lesion_features.FEATURES);
        # response_link: how items combine on the viable share; response_item_pairs: whether the head reads
        # what pairs of items do together (ResponseHead).
        self.response_head = ResponseHead(
            n_actions, self.n_response, response_features, response_link, response_item_pairs
        )
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=self.input_channels,
            out_channels=1,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
        )

    @property
    def input_channels(self) -> int:
        """Channels of the concatenated input: noisy patch, image conditions, one per compartment."""
        return 1 + IMAGE_CONDITIONS + len(COMPARTMENTS)

    def response(self, protocols: torch.Tensor, features: np.ndarray | None = None) -> torch.Tensor:
        """The predicted response to each protocol (rows of a multi-hot matrix), which the layout places, for
        a lesion with these `features` (`oncoplan.tace.lesion_features`; None: a lesion like the average)."""
        return self.response_head(protocols, features)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **_: object):
        if x.shape[1] != self.input_channels:
            raise ValueError(f"expected {self.input_channels} input channels, got {x.shape[1]}")
        return self.unet(x, timesteps)


def fit_response_head(
    network: ResponseConditionedUNet,
    items: Sequence[Mapping[str, object]],
    alpha: float = 1e-2,
    alpha_items: float | None = None,
    alpha_pairs: float | None = None,
) -> nn.Module:
    """Fit `network`'s response head to the training items' ("protocol", "response") pairs, and their lesion
    "features" where the head reads them, with the ridge penalties of `ResponseHead.fit`; returns it."""
    protocols = np.asarray([item["protocol"] for item in items], dtype=np.float64)
    responses = np.asarray([item["response"] for item in items], dtype=np.float64)
    features = None
    if network.response_head.n_features:
        features = np.asarray([item["features"] for item in items], dtype=np.float64)
    r2 = network.response_head.fit(protocols, responses, features, alpha, alpha_items, alpha_pairs)
    what = "residual" if network.response_head.link == "log" else "viable share"
    LOG.info("response head fitted on %d cases: R^2 of the %s %.3f", len(items), what, r2)
    return network


class _ConcatCondition:
    """Tell MONAI's `DiffusionInferer` that the condition is concatenated to the noisy input."""

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        return images, target, args, {**infer_kwargs, "mode": "concat"}


class ConcatDiffusionPrepareBatch(_ConcatCondition, DiffusionPrepareBatch):
    """MONAI's `DiffusionPrepareBatch` (noise target) for a concatenated condition."""


class ConcatVPredictionPrepareBatch(_ConcatCondition, VPredictionPrepareBatch):
    """MONAI's `VPredictionPrepareBatch` (velocity target) for a concatenated condition.

    The bundle trains on velocity: with noise targets the network's image estimate at low SNR was
    hundreds of HU off, and DDIM, which starts there, drifted away from the pre-treatment scan even
    where nothing changes; velocity targets are well scaled at every noise level.
    """


def null_condition(channels: torch.Tensor, start: int, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """A copy of `channels` with every compartment channel (from `start` on) of `rows` zeroed: the
    "null" layout (no treated lesion drawn) that condition dropout trains and classifier-free
    guidance contrasts with. `start` is `IMAGE_CONDITIONS` in a condition, `1 + IMAGE_CONDITIONS` in the
    network's input."""
    out = channels.clone()
    out[rows, start:] = 0.0
    return out


class LesionWeightedVPrediction(ConcatVPredictionPrepareBatch):
    """Velocity targets that carry a per-voxel loss weight, with condition dropout.

    Treatment changes only the lesion (5-20% of a patch); a plain L1 over the patch spends most
    of its gradient on reproducing unchanged liver. The target gains a second channel, the weight
    `1 + lesion_weight` inside the tumor mask (condition channel 1) and 1 elsewhere, which
    `LesionWeightedL1` applies. With probability `condition_dropout` a sample's compartment channels
    are zeroed (a "null" layout), so the same network also learns the layout-free prediction that
    classifier-free guidance (`ConditionGuidance`) contrasts with.
    """

    def __init__(
        self,
        scheduler: nn.Module,
        num_train_timesteps: int,
        condition_name: str | None = "condition",
        lesion_weight: float = 4.0,
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__(scheduler, num_train_timesteps, condition_name)
        self.lesion_weight, self.condition_dropout = float(lesion_weight), float(condition_dropout)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        cond = infer_kwargs["condition"]
        if self.condition_dropout > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < self.condition_dropout
            cond = null_condition(cond, IMAGE_CONDITIONS, drop)  # the condition has no noisy-image channel
            infer_kwargs = {**infer_kwargs, "condition": cond}
        weight = 1.0 + self.lesion_weight * (cond[:, 1:2] > 0.5).to(target.dtype)
        return images, torch.cat([target, weight], dim=1), args, infer_kwargs


class FixedNoiseVPrediction(ConcatVPredictionPrepareBatch):
    """Validation velocity targets whose noise and timesteps repeat every `cycle` batches (the number
    of validation batches), so successive validations compare weights, not draws of noise and t."""

    def __init__(
        self,
        scheduler: nn.Module,
        num_train_timesteps: int,
        condition_name: str | None = "condition",
        cycle: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(scheduler, num_train_timesteps, condition_name)
        self.cycle, self.seed, self.calls = max(1, int(cycle)), int(seed), 0
        self.generator = torch.Generator()

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        self.generator.manual_seed(self.seed + self.calls % self.cycle)
        self.calls += 1
        return super().__call__(batchdata, device, non_blocking, **kwargs)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape, generator=self.generator).to(images)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (images.shape[0],), generator=self.generator).long()


class LesionWeightedL1(nn.Module):
    """L1 between the prediction and channel 0 of the target, weighted by its channel 1 (see above)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value, weight = target[:, :1], target[:, 1:2]
        return (weight * (pred - value).abs()).sum() / (weight.sum() * pred.shape[1])


class ConditionGuidance(nn.Module):
    """Classifier-free guidance over the layout: out = f(null) + scale * (f(layout) - f(null)).

    `scale` 1 is the plain conditional model; above 1 it amplifies what the layout changes. The
    null is the one `LesionWeightedVPrediction` trains with (every compartment channel zero).
    Both halves run as one batch.
    """

    def __init__(self, network: Callable[..., torch.Tensor], scale: float) -> None:
        super().__init__()
        self.network, self.scale = network, float(scale)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **_: object):
        null = null_condition(x, 1 + IMAGE_CONDITIONS)
        steps = timesteps if timesteps.numel() == 1 else torch.cat([timesteps, timesteps])
        given, free = self.network(torch.cat([x, null]), steps, context).chunk(2)
        return free + self.scale * (given - free)


def condition(pre: torch.Tensor, mask: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """The concatenated condition for a batch: pre (B,1,...), mask (B,1,...), compartments (B,3,...)."""
    return torch.cat([pre, mask.float(), layout.float().to(pre.device)], dim=1)


HU_WINDOW = (-175.0, 600.0)  # the bundle's `hu_window` (HU mapped to -1..1); a test checks the configs agree


def to_hu(image: np.ndarray, scale: tuple[float, float, float, float] = (*HU_WINDOW, -1.0, 1.0)) -> np.ndarray:
    """Model-space intensities back to HU: the inverse of ScaleIntensityRanged(a_min, a_max, b_min,
    b_max) given as `scale`; by default the bundle's HU_WINDOW -> [-1, 1]."""
    a_min, a_max, b_min, b_max = scale
    return (a_min + (image - b_min) * (a_max - a_min) / (b_max - b_min)).astype(np.float32)


class Anchor:
    """Start sampling from the layout painted at compartment level instead of from pure noise
    (SDEdit, Meng et al. 2022): every lesion voxel takes its compartment's typical intensity (the
    surrounding liver's where the lesion shrank away), that image is noised to the step where
    `strength` of the schedule remains and the renderer denoises only from there. The layout then
    fixes what is coarse (which part of the lesion is bright, dark or gone) and the renderer adds the
    texture, where starting from pure noise leaves both to a small renderer. `strength` 1 is plain
    sampling; `levels_hu` the viable, necrosis and Lipiodol intensities (HU), mapped to model units
    as the bundle's intensity scaling maps `hu_range` to -1..1."""

    RING = 2  # voxels around the tumor mask whose median pre-treatment intensity is the liver's

    def __init__(
        self,
        strength: float = 1.0,
        levels_hu: Sequence[float] = (0.0, 0.0, 0.0),
        hu_range: Sequence[float] = HU_WINDOW,
    ) -> None:
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"anchor strength must be in (0, 1], got {strength}")
        if len(levels_hu) != len(COMPARTMENTS):
            raise ValueError(f"anchor levels: one per compartment {COMPARTMENTS}, got {list(levels_hu)}")
        lo, hi = (float(v) for v in hu_range)
        self.strength = float(strength)
        self.levels = tuple(min(max((float(v) - lo) / (hi - lo) * 2.0 - 1.0, -1.0), 1.0) for v in levels_hu)

    def image(self, pre: torch.Tensor, mask: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial): `pre` (1, 1, ...) with the lesion (`mask`) drawn from `layout` (B, 3, ...)."""
        tumor = mask > 0.5
        size = 2 * self.RING + 1
        ring = (nn.functional.max_pool3d(tumor.float(), size, stride=1, padding=self.RING) > 0) & ~tumor
        liver = pre[ring].median() if ring.any() else pre.median()
        out = torch.where(tumor, liver, pre).expand(layout.shape[0], 1, *pre.shape[2:]).clone()
        for channel, level in enumerate(self.levels):
            out[layout[:, channel : channel + 1] > 0.5] = level
        return out

    def steps_left(self, steps: int) -> int:
        """How many of a `steps`-step schedule run from the anchored start (all of them at strength 1)."""
        if self.strength >= 1.0:
            return steps
        return steps - min(steps - 1, round((1.0 - self.strength) * steps))

    def start(
        self, sampler, noise: torch.Tensor, pre: torch.Tensor, mask: torch.Tensor, layout: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised starting image (`image`) and the timesteps left to run; at strength 1 `noise`
        and all of them, without painting anything."""
        timesteps = sampler.timesteps
        if self.strength >= 1.0:
            return noise, timesteps
        skip = len(timesteps) - self.steps_left(len(timesteps))
        return sampler.add_noise(self.image(pre, mask, layout), noise, timesteps[skip : skip + 1]), timesteps[skip:]


def layout_labels(mask: torch.Tensor, responses: torch.Tensor, samples: int, seed: int = 0) -> np.ndarray:
    """Lesion label maps (P * samples, *spatial) for every (response, sample): sample `s` of every
    protocol uses the same perturbation (seeded by `seed` and `s`)."""
    tumor = mask[0, 0].cpu().numpy()
    return np.stack(
        [
            lesion_layout(tumor, r, np.random.default_rng([seed, s]))
            for r in responses.cpu().numpy()
            for s in range(samples)
        ]
    )


def layouts(mask: torch.Tensor, responses: torch.Tensor, samples: int, seed: int = 0) -> torch.Tensor:
    """Compartment channels (P * samples, 3, *spatial) of `layout_labels`: the renderer's condition."""
    maps = [compartments(labels) for labels in layout_labels(mask, responses, samples, seed)]
    return torch.as_tensor(np.stack(maps)).to(mask.device)


@torch.no_grad()
def simulate(
    network: Callable[..., torch.Tensor],
    pre: torch.Tensor,
    mask: torch.Tensor,
    responses: torch.Tensor,
    sampler,
    samples: int = 5,
    seed: int = 0,
    guidance: float = 1.0,
    anchor: Anchor | None = None,
) -> torch.Tensor:
    """Post-treatment patches for every (response, sample): returns (P, samples, 1, *spatial).

    `responses` are the response head's predictions for P protocols (`ResponseConditionedUNet.response`),
    laid out in the mask (`layouts`); `pre`/`mask` one patch (1, 1, *spatial); `sampler` a MONAI
    scheduler with its timesteps set (DDIM in the bundle); `network` the module or an accelerated
    forward of it. All protocols and samples run as one batch: the planner scores candidates together,
    not one at a time. The same seed gives the same noise and layout perturbation for every protocol,
    so differences between protocols come from the protocol, not from the draw. `guidance` > 1 samples
    with classifier-free guidance (`ConditionGuidance`); an `anchor` below strength 1 starts from the
    layout painted at compartment level (`Anchor`).
    """
    from monai.inferers import DiffusionInferer

    n_protocols = responses.shape[0]
    batch = n_protocols * samples
    layout = layouts(mask, responses, samples, seed)
    cond = condition(pre.expand(batch, *pre.shape[1:]), mask.expand(batch, *mask.shape[1:]), layout)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((samples, 1, *pre.shape[2:]), generator=generator).repeat(n_protocols, 1, 1, 1, 1)
    anchor = anchor or Anchor()
    start, timesteps = anchor.start(sampler, noise.to(pre.device), pre, mask, layout)
    if guidance != 1.0:
        network = ConditionGuidance(network, guidance)
    full, sampler.timesteps = sampler.timesteps, timesteps  # the inferer runs the sampler's timesteps
    try:
        out = DiffusionInferer(sampler).sample(start, network, sampler, conditioning=cond, mode="concat", verbose=False)
    finally:
        sampler.timesteps = full
    return out.view(n_protocols, samples, 1, *pre.shape[2:])

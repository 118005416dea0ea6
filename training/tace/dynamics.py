"""The dynamics model (MeWM seed B.2): post-treatment CT patch from the pre-treatment patch, the tumor
mask and the TACE protocol, as a conditional DDPM trained with MONAI's diffusion components.

The network is MONAI's `DiffusionModelUNet`. Image conditions (pre-treatment patch, tumor mask)
are concatenated to the noisy input, as the released MeWM model concatenates its latent and mask.
The protocol is a multi-hot vector over the action base and enters twice: each action becomes a
token (a learned "given" or "not given" embedding) that the UNet attends to by cross-attention, and
the sum of per-action embeddings is added to the timestep embedding, which every residual block of
the UNet receives (MONAI's class-conditioning path, with the set of actions as the "class"). The
second path reaches the whole network from the first step of training; cross-attention alone sits
at the coarsest level and learned the protocol too slowly on a CPU budget. So the model cannot
ignore the protocol the way MeWM's released inference did (it replaced the protocol with noise).

The protocol travels inside the concatenated condition as constant channels, so MONAI's stock
`DiffusionPrepareBatch`, `DiffusionInferer` (mode "concat") and `SupervisedTrainer` drive training
and sampling unchanged; `ProtocolConditionedUNet` splits it off again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch, VPredictionPrepareBatch
from monai.networks.nets import DiffusionModelUNet
from monai.transforms import MapTransform
from torch import nn

from ..actions import ACTION_BASE, Protocol

IMAGE_CONDITIONS = 2  # pre-treatment patch, tumor mask


def multi_hot(protocol: Protocol | str) -> list[float]:
    """The protocol as a multi-hot vector over `ACTION_BASE` (the order of every model's input)."""
    p = Protocol.parse(protocol) if isinstance(protocol, str) else protocol
    return [float(a in p.items) for a in ACTION_BASE]


class ProtocolTokens(nn.Module):
    """Multi-hot protocol -> one token per action of the action base: a 'given' or a 'not given' embedding."""

    def __init__(self, n_actions: int = len(ACTION_BASE), dim: int = 64) -> None:
        super().__init__()
        self.given = nn.Parameter(torch.randn(n_actions, dim) * 0.02)
        self.absent = nn.Parameter(torch.randn(n_actions, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, protocol: torch.Tensor) -> torch.Tensor:
        p = protocol.float().unsqueeze(-1)  # (B, A, 1)
        return self.norm(p * self.given + (1.0 - p) * self.absent)


class ProtocolConditionedUNet(nn.Module):
    """`DiffusionModelUNet` whose input carries [noisy post, pre, mask, protocol channels...].

    The protocol channels are constant over space; their value at the first voxel is the multi-hot
    vector, turned into cross-attention tokens. Everything else is MONAI's UNet.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 16,
        token_dim: int = 64,
        norm_num_groups: int = 16,
        n_actions: int = len(ACTION_BASE),
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.tokens = ProtocolTokens(n_actions, token_dim)
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=1 + IMAGE_CONDITIONS,
            out_channels=1,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            with_conditioning=True,
            cross_attention_dim=token_dim,
            num_class_embeds=n_actions,
        )
        # A set of actions embeds as the sum of its actions' embeddings: a bias-free linear map of
        # the multi-hot vector, in place of the UNet's one-label nn.Embedding.
        self.unet.class_embedding = nn.Linear(n_actions, channels[0] * 4, bias=False)

    @property
    def input_channels(self) -> int:
        """Channels of the concatenated input: noisy patch, image conditions, one per action."""
        return self.unet.in_channels + self.n_actions

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **_: object):
        images, protocol = x[:, : 1 + IMAGE_CONDITIONS], x[:, 1 + IMAGE_CONDITIONS :]
        if protocol.shape[1] != self.n_actions:
            raise ValueError(f"expected {self.n_actions} protocol channels, got {protocol.shape[1]}")
        vector = protocol.flatten(2)[..., 0]
        return self.unet(images, timesteps, context=self.tokens(vector), class_labels=vector)


class ProtocolChannelsd(MapTransform):
    """Broadcast the multi-hot `key` over the spatial grid of `like` (channel-first) into `name`."""

    def __init__(self, keys: str, like: str, name: str = "protocol_channels") -> None:
        super().__init__(keys)
        self.like, self.name = like, name

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        vector = torch.as_tensor(np.asarray(d[self.keys[0]], dtype=np.float32))
        ref = d[self.like]
        shape = tuple(ref.shape[1:])
        channels = vector.view(-1, *([1] * len(shape))).expand(-1, *shape).clone()
        # Same container as the image, so ConcatItemsd can join them (MetaTensor keeps the affine).
        d[self.name] = MetaTensor(channels, affine=ref.affine) if isinstance(ref, MetaTensor) else channels
        return d


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


def null_protocol(channels: torch.Tensor, start: int, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """A copy of `channels` with every protocol channel (from `start` on) of `rows` zeroed: the "null"
    protocol (no action given) that protocol dropout trains and classifier-free guidance contrasts with.
    `start` is `IMAGE_CONDITIONS` in a condition, `1 + IMAGE_CONDITIONS` in the network's input."""
    out = channels.clone()
    out[rows, start:] = 0.0
    return out


class LesionWeightedVPrediction(ConcatVPredictionPrepareBatch):
    """Velocity targets that carry a per-voxel loss weight, with protocol dropout.

    The protocol changes only the lesion (5-20% of a patch); a plain L1 over the patch spends most
    of its gradient on reproducing unchanged liver. The target gains a second channel, the weight
    `1 + lesion_weight` inside the tumor mask (condition channel 1) and 1 elsewhere, which
    `LesionWeightedL1` applies. With probability `protocol_dropout` a sample's protocol channels
    are zeroed (no action given: a "null" protocol that no real one equals), so the same network
    also learns the protocol-free prediction that classifier-free guidance (`ProtocolGuidance`)
    contrasts with.
    """

    def __init__(
        self,
        scheduler: nn.Module,
        num_train_timesteps: int,
        condition_name: str | None = "condition",
        lesion_weight: float = 4.0,
        protocol_dropout: float = 0.1,
    ) -> None:
        super().__init__(scheduler, num_train_timesteps, condition_name)
        self.lesion_weight, self.protocol_dropout = float(lesion_weight), float(protocol_dropout)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        cond = infer_kwargs["condition"]
        if self.protocol_dropout > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < self.protocol_dropout
            cond = null_protocol(cond, IMAGE_CONDITIONS, drop)  # the condition has no noisy-image channel
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


class ProtocolGuidance(nn.Module):
    """Classifier-free guidance over the protocol: out = f(null) + scale * (f(protocol) - f(null)).

    `scale` 1 is the plain conditional model; above 1 it amplifies what the protocol changes. The
    null protocol is the one `LesionWeightedVPrediction` trains with (every protocol channel zero).
    Both halves run as one batch.
    """

    def __init__(self, network: Callable[..., torch.Tensor], scale: float) -> None:
        super().__init__()
        self.network, self.scale = network, float(scale)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **_: object):
        null = null_protocol(x, 1 + IMAGE_CONDITIONS)
        steps = timesteps if timesteps.numel() == 1 else torch.cat([timesteps, timesteps])
        given, free = self.network(torch.cat([x, null]), steps, context).chunk(2)
        return free + self.scale * (given - free)


def condition(pre: torch.Tensor, mask: torch.Tensor, protocols: torch.Tensor) -> torch.Tensor:
    """The concatenated condition for a batch: pre (B,1,...), mask (B,1,...), protocols (B, A)."""
    shape = pre.shape[2:]
    channels = protocols.float().view(*protocols.shape, *([1] * len(shape))).expand(-1, -1, *shape)
    return torch.cat([pre, mask.float(), channels.to(pre.device)], dim=1)


@torch.no_grad()
def simulate(
    network: Callable[..., torch.Tensor],
    pre: torch.Tensor,
    mask: torch.Tensor,
    protocols: torch.Tensor,
    sampler,
    samples: int = 5,
    seed: int = 0,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Post-treatment patches for every (protocol, sample): returns (P, samples, 1, *spatial).

    `pre`/`mask` are one patch (1, 1, *spatial); `sampler` a MONAI scheduler with its timesteps set
    (DDIM in the bundle); `network` the module or an accelerated forward of it. All protocols and
    samples run as one batch: the planner scores candidates together, not one at a time. The same
    seed gives the same noise for every protocol, so differences between protocols come from the
    protocol, not from the draw. `guidance` > 1 samples with classifier-free guidance (`ProtocolGuidance`).
    """
    from monai.inferers import DiffusionInferer

    n_protocols = protocols.shape[0]
    batch_protocols = protocols.repeat_interleave(samples, dim=0)
    batch = len(batch_protocols)
    cond = condition(pre.expand(batch, *pre.shape[1:]), mask.expand(batch, *mask.shape[1:]), batch_protocols)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((samples, 1, *pre.shape[2:]), generator=generator).repeat(n_protocols, 1, 1, 1, 1)
    if guidance != 1.0:
        network = ProtocolGuidance(network, guidance)
    out = DiffusionInferer(sampler).sample(
        noise.to(pre.device), network, sampler, conditioning=cond, mode="concat", verbose=False
    )
    return out.view(n_protocols, samples, 1, *pre.shape[2:])

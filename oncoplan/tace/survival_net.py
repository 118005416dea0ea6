"""The survival network of the TACE heuristic (MeWM seed, appendix B.4), as the planner runs it: an
MC3-style 3D ResNet encodes [CT, tumor mask] patches of both studies, MONAI's two-way transformer lets
the pre and post token sets attend to each other, gated-attention multiple-instance pooling turns the K
patches of one case into one embedding, and fully connected layers give one log-risk. Its training
(Cox loss, C-index, reports) is in oncoplan.training.tace.survival."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.networks.blocks import Convolution, UnetResBlock
from monai.networks.nets.vista3d import TwoWayTransformer
from monai.transforms import Compose, Randomizable
from torch import nn

from oncoplan.errors import InputError

BAG_KEYS = ("pre_image", "pre_label", "post_image", "post_label")  # channel order of one patch


class PatchBagd(Randomizable):
    """Crop K patches at the same random centres from every registered volume; stack them into one bag.

    `cropper` is a dictionary cropper returning K dicts (RandCropByPosNegLabeld over `keys`): the pre and
    post studies are registered, so one centre addresses the same anatomy in both. `patch_transforms`
    (e.g. rotation, intensity shift) then act on each patch. The output "image" is (K, len(keys), *roi).
    With `seed`, every call reseeds first, so evaluation crops are repeatable across epochs and runs.
    """

    def __init__(
        self,
        cropper: Callable,
        patch_transforms: Sequence[Callable] = (),
        keys: Sequence[str] = BAG_KEYS,
        bag_key: str = "image",
        seed: int | None = None,
    ) -> None:
        self.cropper, self.keys, self.bag_key, self.seed = cropper, tuple(keys), bag_key, seed
        self.patch_transforms = Compose(list(patch_transforms))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> PatchBagd:
        super().set_random_state(seed, state)
        for t in (self.cropper, self.patch_transforms):
            if isinstance(t, Randomizable):
                t.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.seed is not None:
            self.set_random_state(seed=self.seed)
        patches = [self.patch_transforms(p) for p in self.cropper(dict(data))]
        bag = torch.stack([torch.cat([torch.as_tensor(p[k]).float() for k in self.keys]) for p in patches])
        out = {k: v for k, v in data.items() if k not in self.keys}
        out[self.bag_key] = bag.as_tensor() if hasattr(bag, "as_tensor") else bag  # plain tensor: no meta to collate
        return out


# ---------------------------------------------------------------- network


class MC3Encoder(nn.Module):
    """MC3-style 3D ResNet (Tran et al. 2018): full 3x3x3 convolutions in the stem and the first
    `full_3d_stages` stages, in-plane (3, 3, 1) ones after (MONAI RAS layout keeps the slice axis last).
    Built from MONAI blocks; every stage after the first halves the grid, the stem does too."""

    def __init__(
        self,
        in_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        full_3d_stages: int = 1,
        blocks_per_stage: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            Convolution(3, in_channels, channels[0], strides=2, kernel_size=3, norm=norm, act="relu")
        ]
        prev = channels[0]
        for i, ch in enumerate(channels):
            kernel = (3, 3, 3) if i < full_3d_stages else (3, 3, 1)
            for b in range(blocks_per_stage):
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(UnetResBlock(3, prev, ch, kernel, stride, norm_name=norm, act_name="relu"))
                prev = ch
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling over the instances of a bag (Ilse et al. 2018): weights depend on each
    instance alone, so the pooled embedding does not depend on instance order."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.v, self.u, self.w = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, K, dim) -> pooled (B, dim), attention weights (B, K)."""
        a = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1).softmax(dim=1)
        return (a.unsqueeze(-1) * h).sum(1), a


class SurvivalNet(nn.Module):
    """Log-risk of a case from a bag of K registered patches [pre CT, pre tumor, post CT, post tumor].

    Input (B, K, 4, D, H, W), or (B, 4, D, H, W) for one patch per case; output (B, 1).
    One encoder is shared by pre and post (a Siamese encoder): both studies are CT of the same liver,
    a common feature space lets the cross-attention compare like with like, and it halves the weights
    a small cohort must fit. The two-way transformer is MONAI's (vista3d), not a copy of SAM's.
    """

    def __init__(
        self,
        in_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        full_3d_stages: int = 1,
        blocks_per_stage: int = 1,
        norm: str = "batch",
        transformer_depth: int = 2,
        num_heads: int = 4,
        mil_hidden: int = 64,
        head_hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        dim = channels[-1]
        self.encoder = MC3Encoder(in_channels, channels, full_3d_stages, blocks_per_stage, norm)
        self.position = nn.Linear(3, dim)  # from normalised token coordinates: any patch size works
        self.interaction = TwoWayTransformer(transformer_depth, dim, num_heads, mlp_dim=2 * dim)
        self.mil = GatedAttentionMIL(2 * dim, mil_hidden)
        self.head = nn.Sequential(
            nn.Linear(2 * dim, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(head_hidden, 1)
        )

    def _positions(self, grid: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        axes = [torch.linspace(-1, 1, n, device=like.device, dtype=like.dtype) for n in grid]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        return self.position(coords)  # (N, dim)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 2 * in_channels, *roi) -> (N, 2 * dim): pre tokens query the post feature map and back."""
        pre, post = patches.split(self.in_channels, dim=1)
        features = self.encoder(torch.cat([pre, post]))  # one pass through the shared encoder
        pre_map, post_map = features.chunk(2)
        n, dim, *grid = post_map.shape
        pe = self._positions(grid, post_map)
        pre_tokens = pre_map.flatten(2).transpose(1, 2) + pe
        post_pe = pe.transpose(0, 1).reshape(1, dim, *grid).expand(n, -1, -1, -1, -1)
        pre_out, post_out = self.interaction(post_map, post_pe, pre_tokens)
        return torch.cat([pre_out.mean(1), post_out.mean(1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            x = x.unsqueeze(1)
        b, k = x.shape[:2]
        instances = self.embed(x.flatten(0, 1)).view(b, k, -1)
        pooled, _ = self.mil(instances)
        return self.head(pooled)


class BagInferer(Inferer):
    """Case risk from a bag: "mean" averages the risks of its patches scored one by one (seed B.4:
    5 foreground patches per case), "mil" scores the bag through the attention pooling (as trained)."""

    def __init__(self, aggregation: str = "mean") -> None:
        if aggregation not in ("mean", "mil"):
            raise InputError(f"aggregation must be 'mean' or 'mil', got {aggregation!r}")
        self.aggregation = aggregation

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if self.aggregation == "mil" or inputs.ndim == 5:
            return network(inputs, *args, **kwargs)
        b, k = inputs.shape[:2]
        return network(inputs.flatten(0, 1).unsqueeze(1), *args, **kwargs).view(b, k).mean(1, keepdim=True)

"""LLMSeg's context-aligned 3D residual U-Net, and its vision-only baseline (same net, no text).

Five residual levels (stride 2 between levels) built from MONAI's DynUNet blocks; at every
level a CrossBlock aligns the skip features with the text context through MONAI's SAM-style
`TwoWayTransformer`, and the aligned image tokens replace the encoder features the decoder sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.blocks.unetr_block import UnetrUpBlock
from monai.networks.nets.vista3d import PositionEmbeddingRandom, TwoWayTransformer
from torch import nn

from oncoplan.ctv.text_encoder import is_student_key


class CrossBlock(nn.Module):
    """Text context (B, N, text_dim) x image features (B, C, *spatial) -> aligned image features."""

    def __init__(self, channels: int, text_dim: int, depth: int = 2, max_heads: int = 8) -> None:
        super().__init__()
        heads = max(1, min(max_heads, channels // 16))  # the attention width (channels/2) must split evenly
        self.project = nn.Linear(text_dim, channels)
        self.position = PositionEmbeddingRandom(channels // 2)
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=channels, num_heads=heads, mlp_dim=2 * channels)

    def forward(self, image: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        tokens = self.project(context)
        pe = self.position(tuple(image.shape[2:])).unsqueeze(0).expand(image.shape[0], -1, -1, -1, -1)
        _, aligned = self.transformer(image, pe.to(image.dtype), tokens)
        return aligned.transpose(1, 2).reshape(image.shape)


class ContextUNet(nn.Module):
    """`forward(image, context)`; `text_dim=None` builds the vision-only baseline (context ignored)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        text_dim: int | None = 384,
        transformer_depth: int = 2,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"LLMSeg uses 5 levels; got channels={tuple(channels)}")
        self.text_dim = text_dim
        kw = {"spatial_dims": 3, "kernel_size": 3, "norm_name": norm}
        self.encoders = nn.ModuleList(
            UnetResBlock(in_channels=c_in, out_channels=c, stride=1 if i == 0 else 2, **kw)
            for i, (c_in, c) in enumerate(zip([in_channels, *channels[:-1]], channels, strict=True))
        )
        self.cross = nn.ModuleList(CrossBlock(c, text_dim, transformer_depth) for c in channels) if text_dim else None
        self.decoders = nn.ModuleList(
            UnetrUpBlock(in_channels=c_deep, out_channels=c, upsample_kernel_size=2, res_block=True, **kw)
            for c_deep, c in zip(channels[:0:-1], channels[-2::-1], strict=True)
        )
        self.head = UnetOutBlock(3, channels[0], out_channels)

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        x = image
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if self.cross is not None:
                if context is None:
                    raise ValueError("this network is text-guided: a context is required")
                ctx = context.expand(x.shape[0], -1, -1) if context.shape[0] == 1 else context
                x = self.cross[level](x, ctx.to(x.dtype))
            skips.append(x)
        x = skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.head(x)


class TextGuidedSegmenter(nn.Module):
    """Notes + image -> logits: the bundle's network. The frozen LM stays out of checkpoints
    (its LoRA adapters, when it has them, are in)."""

    def __init__(self, unet: ContextUNet, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        if (text_encoder is None) != (unet.text_dim is None):
            raise ValueError("a text encoder goes with a text-guided U-Net, and only with one")
        self.unet = unet
        self.text = text_encoder

    def context(self, notes: Sequence[str] | None) -> torch.Tensor | None:
        if self.text is None:
            return None
        if not notes:
            raise ValueError("the text-guided model needs a clinical note for every image")
        return self.text(list(notes))

    def forward(self, image: torch.Tensor, notes: Sequence[str] | None = None) -> torch.Tensor:
        return self.unet(image, self.context(notes))

    # Checkpoints hold what trains: the U-Net, prompts, [SEG] and, with `lora_rank`, the student route
    # (LoRA adapters of the LM, prompt and [SEG] shifts); the LM itself is named by its path. A checkpoint
    # with no student at all (saved before it existed, e.g. the data-efficiency models, or with it left
    # out on purpose: the distillation's start) loads with the student zeroed, which is exactly the plain
    # model; part of a student missing, or a student the config lacks, is refused under strict loading
    # (the default everywhere here), never run half-adapted.
    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[override]
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if _frozen_lm_key(k, prefix)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        student = [k for k in self.state_dict() if is_student_key(k)]
        if student and not any(k in state_dict for k in student):
            _zero_student(self)
            result.missing_keys[:] = [k for k in result.missing_keys if k not in student]
        missing = [k for k in result.missing_keys if not _frozen_lm_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result


def _frozen_lm_key(key: str, prefix: str = "") -> bool:
    return key.startswith(prefix + "text.lm.") and not is_student_key(key)


@torch.no_grad()
def _zero_student(module: nn.Module) -> None:
    """LoRA's B matrices and the prompt/[SEG] shifts to zero: the student route is then the plain encoder."""
    for name, param in module.named_parameters():
        if is_student_key(name) and "lora_A" not in name:
            param.zero_()

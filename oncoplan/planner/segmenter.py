"""The study's liver and tumour labels in model space, as the planner reads them: the assistant bundle's
preprocessing, its sliding-window inferer and its label map without the inversion (planning stays in
model space). One home for the app (a CT read from DICOM) and the evaluation's ``--mask assistant`` (a
prepared NIfTI), so the ablation of the mask measures the app's own segmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class StudySegmenter:
    """The assistant bundle's preprocessing and inferer on the CPU, the network through `forward` (the
    world model's assistant, on whichever device and backend it runs)."""

    def __init__(
        self,
        assistant: Path,
        forward: Callable[..., torch.Tensor],
        overlap: float,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """`overrides`: the assistant bundle's config overrides the world model was loaded with (its
        roi_size, pixdim or label map then hold here too)."""
        from monai.transforms import Invertd

        from oncoplan.runtime.bundles import bundle_parser

        # Preprocessing on the CPU (it reads the volume there); the network on the world model's device.
        fixed = {"device": "$torch.device('cpu')", "overlap": overlap}
        parser = bundle_parser(Path(assistant), overrides={**(overrides or {}), **fixed})
        self.preprocessing = parser.get_parsed_content("preprocessing").transforms  # [0] is the file loader
        self.inferer = parser.get_parsed_content("inferer")
        self.label_map = [t for t in parser.get_parsed_content("label_map") if not isinstance(t, Invertd)]
        self.spacing = tuple(float(v) for v in parser.get_parsed_content("pixdim"))
        self.forward = forward

    def scale(self, image: Any):
        """The bundle's preprocessing alone (RAS, its voxel spacing, HU window): a (1, X, Y, Z) MetaTensor in
        model space, from a MetaTensor (the loader skipped) or an image file. A second phase on the same grid
        comes out on the same model-space grid."""
        on_file = isinstance(image, (str, Path))
        data = {"image": str(image) if on_file else image}
        for t in self.preprocessing if on_file else self.preprocessing[1:]:
            data = t(data)
        return data["image"]

    @torch.no_grad()
    def segment(self, image: Any, device: torch.device | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scaled CT (X, Y, Z), labels (X, Y, Z), index -> RAS affine) in model space, from a MetaTensor
        (in memory: the loader is skipped) or the path of an image file (read by the bundle's loader).
        `device`: where `forward` runs (the world model's device; the forward does not move its input)."""
        scaled = self.scale(image)
        pred = {"pred": self.inferer(scaled[None].float().to(device), self.forward)[0]}
        for t in self.label_map:
            pred = t(pred)
        labels = np.asarray(pred["pred"][0].cpu()).astype(np.uint8)
        return np.asarray(scaled[0].cpu(), dtype=np.float32), labels, np.asarray(scaled.affine, dtype=float)

"""Run the CTV bundle's inference config on one image + note and get the mask on the image grid.

The bundle's `inference.json` is the single source of its network, preprocessing and inferer;
this class only parses it (with overrides) and applies the pieces to one case at a time, so
that evaluation can ask for any note (counterfactuals) without writing a datalist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class CTVPredictor:
    def __init__(
        self,
        bundle_dir: str | Path,
        text_guided: bool = True,
        model_name: str | None = None,
        overrides: dict | None = None,
        backends: tuple[str, ...] = ("torch",),
    ) -> None:
        """`backends`: preference order for the U-Net (see oncoplan.operators.inference_backend);
        the app asks for ("tensorrt", "onnxruntime", "torch"), evaluation runs eager PyTorch."""
        from ..bundle_loading import bundle_parser, load_network

        self.bundle = Path(bundle_dir)
        parser = bundle_parser(self.bundle, overrides={"text_guided": text_guided, **(overrides or {})})
        if model_name:
            parser["model_name"] = model_name
        self.text_guided = text_guided
        self.device = parser.get_parsed_content("device")
        self.network = load_network(parser)
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        from oncoplan.operators.inference_backend import cache_dir, select_backend, unet_signature

        unet = self.network.unet
        signature = unet_signature(parser.get_parsed_content("roi_size"), getattr(unet, "text_dim", None))
        self.unet, self.backend = select_backend(unet, signature, cache_dir(), prefer=backends, prefix="ctv_unet")

    def _pipeline(self, image):
        """The config's preprocessing; an in-memory MetaTensor skips its loader (the first transform)."""
        if isinstance(image, (str, Path)):
            return self.preprocessing
        from monai.transforms import Compose

        return Compose(self.preprocessing.transforms[1:])

    @torch.no_grad()
    def probabilities(self, image, notes: list[str]) -> list[np.ndarray]:
        """CTV probability on the input image's own grid, one array per note (image read once).

        `image` is a file path, or a channel-less MetaTensor with its affine (a DICOM volume).
        """
        from monai.transforms import Invertd

        pipeline = self._pipeline(image)
        data = pipeline({"image": image if isinstance(image, (str, Path)) else image.clone(), "note": notes[0]})
        batch = data["image"].unsqueeze(0).to(self.device)
        invert = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=False)
        out = []
        for note in notes:
            context = self.network.context([note]) if self.text_guided else None
            logits = self.inferer(batch, lambda x, c=context: self.unet(x, c))
            probs = torch.softmax(logits, dim=1)[0]
            pred = probs[1:2].clone()
            pred.applied_operations = data["image"].applied_operations  # what Invertd undoes
            pred.meta = data["image"].meta
            restored = invert({"pred": pred, "image": data["image"]})["pred"]
            out.append(np.asarray(restored[0].cpu()))
        return out

    def predict(self, image, notes: list[str]) -> list[np.ndarray]:
        return [p > 0.5 for p in self.probabilities(image, notes)]

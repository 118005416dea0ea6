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
        """`backends`: preference order for the U-Net (see oncoplan.runtime.backends);
        the app asks for all of `BACKENDS`, evaluation runs eager PyTorch."""
        from oncoplan.runtime.bundles import bundle_parser, load_network

        self.bundle = Path(bundle_dir)
        parser = bundle_parser(self.bundle, overrides={"text_guided": text_guided, **(overrides or {})})
        if model_name:
            parser["model_name"] = model_name
        self.text_guided = text_guided
        self.device = parser.get_parsed_content("device")
        self.network = load_network(parser)
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        from oncoplan.runtime.backends import cache_dir, select_backend, unet_signature

        unet = self.network.unet
        signature = unet_signature(parser.get_parsed_content("roi_size"), getattr(unet, "text_dim", None))
        from oncoplan.runtime.bundles import trt_args

        self.unet, self.backend = select_backend(
            unet, signature, cache_dir(), prefer=backends, prefix="ctv_unet", trt_args=trt_args(self.bundle)
        )

    def _pipeline(self, image):
        """The config's preprocessing; an in-memory MetaTensor skips its loader (the first transform)."""
        if isinstance(image, (str, Path)):
            return self.preprocessing
        from monai.transforms import Compose

        return Compose(self.preprocessing.transforms[1:])

    def _model_space(self, image, notes: list[str]):
        """(the preprocessed image, one CTV probability (1, ...) in model space per note), each
        carrying the preprocessing's applied operations, for Invertd (image read once)."""
        pipeline = self._pipeline(image)
        data = pipeline({"image": image if isinstance(image, (str, Path)) else image.clone(), "note": notes[0]})
        batch = data["image"].unsqueeze(0).to(self.device)
        preds = []
        for note in notes:
            context = self.network.context([note]) if self.text_guided else None
            logits = self.inferer(batch, lambda x, c=context: self.unet(x, c))
            pred = torch.softmax(logits, dim=1)[0, 1:2].clone()
            pred.applied_operations = data["image"].applied_operations  # what Invertd undoes
            pred.meta = data["image"].meta
            preds.append(pred)
        return pipeline, data["image"], preds

    @torch.no_grad()
    def probabilities(self, image, notes: list[str]) -> list[np.ndarray]:
        """CTV probability on the input image's own grid, one array per note (image read once).

        `image` is a file path, or a channel-less MetaTensor with its affine (a DICOM volume).
        """
        from monai.transforms import Invertd

        pipeline, model_image, preds = self._model_space(image, notes)
        invert = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=False)
        return [np.asarray(invert({"pred": p, "image": model_image})["pred"][0].cpu()) for p in preds]

    @torch.no_grad()
    def predict(self, image, notes: list[str]) -> list[np.ndarray]:
        """CTV masks (probability > 0.5) on the input image's grid, one per note.

        For an in-memory image the transforms after Spacing are undone by MONAI (cheap, on the
        model grid) and the resampling onto the CT is done only around the mask
        (`onto_grid.linear_mask_onto`): the same mask as thresholding `probabilities`, in a fraction
        of the time and memory on a full-size CT."""
        from monai.transforms import Compose, Invertd, Spacingd

        from oncoplan.runtime.grid import linear_mask_onto

        spacing = [i for i, t in enumerate(self.preprocessing.transforms) if isinstance(t, Spacingd)]
        if isinstance(image, (str, Path)) or len(spacing) != 1:
            return [p > 0.5 for p in self.probabilities(image, notes)]
        _, model_image, preds = self._model_space(image, notes)
        tail = Compose(self.preprocessing.transforms[spacing[0] + 1 :])
        undo_tail = Invertd(keys="pred", transform=tail, orig_keys="image", nearest_interp=False)
        affine, shape = np.asarray(image.affine, dtype=float), tuple(image.shape)
        return [linear_mask_onto(undo_tail({"pred": p, "image": model_image})["pred"], affine, shape) for p in preds]

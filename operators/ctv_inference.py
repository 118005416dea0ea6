"""Text-guided CTV segmentation of a CT volume with the CTV bundle (LLMSeg)."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.operators.ct_volume import from_selected_series

log = logging.getLogger(__name__)


class CTVInferenceOperator(Operator):
    """CT image + note -> CTV mask (slice, row, column) on the CT grid, with its volume."""

    def __init__(self, fragment: Fragment, *args, bundle_path: Path, **kwargs) -> None:
        self.bundle_path = Path(bundle_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.input("note")
        spec.output("mask")

    def predictor(self):
        """Loaded on first use (the language model takes seconds), then kept for the process."""
        from oncoplan.ctv.predict import CTVPredictor
        from oncoplan.operators.model_cache import cached
        from oncoplan.runtime.backends import app_backends

        predictor = cached(
            "ctv",
            [self.bundle_path],
            None,
            lambda: CTVPredictor(self.bundle_path, backends=app_backends()),
        )
        log.info("CTV bundle %s: U-Net on %s", self.bundle_path, predictor.backend)
        return predictor

    def compute(self, op_input, op_output, context) -> None:
        image = op_input.receive("image")
        volume = from_selected_series(op_input.receive("study_selected_series_list"), image)
        received = op_input.receive("note")  # the note operator's {"note", "reading"}, or a bare note
        note, reading = (received["note"], received.get("reading")) if isinstance(received, dict) else (received, None)
        (mask,) = self.predictor().predict(volume.metatensor(), [note])
        mask = volume.from_index_order(mask).astype(bool)
        log.info("CTV: %d voxels for note %r", int(mask.sum()), note)
        op_output.emit({"mask": mask, "volume": volume, "note": note, "reading": reading}, "mask")

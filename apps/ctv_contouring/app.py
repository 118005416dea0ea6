"""CTV contouring: CT series + clinical note -> CTV as RTSTRUCT and DICOM-SEG (research use only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from oncoplan.operators.clinical_note import ClinicalNoteOperator, read_study_note
from oncoplan.operators.ctv_inference import CTVInferenceOperator
from oncoplan.operators.ctv_writers import CTVRTStructWriterOperator, CTVSegWriterOperator
from oncoplan.operators.series_rules import series_override
from oncoplan.operators.series_selector import RuleSeriesSelectorOperator
from oncoplan.runtime.bundles import CTV_BUNDLE, bundle_path


class CTVContouringApp(Application):
    """DICOM in -> series selection -> volume -> LLMSeg (image + note) -> RTSTRUCT + SEG."""

    # `python -m` / `monai-deploy exec` options -> constructor keywords (apps/runner.py)
    cli_options: ClassVar[dict[str, str]] = {"--note": "note", "--series": "series"}
    organ = "breast"  # the series rules of this app (series_rules.py)

    def __init__(self, *args, note: str | None = None, series: str | None = None, **kwargs) -> None:
        self.note = note or os.environ.get("ONCOPLAN_NOTE")
        self.series = series_override(series)  # --series, else $ONCOPLAN_SERIES
        super().__init__(*args, **kwargs)

    @staticmethod
    def check_note(input_path: Path, note: str | None = None) -> None:
        """The note the graph will read (--note, $ONCOPLAN_NOTE, clinical.json, a text SR), read before the
        graph starts: a note the reader cannot settle is one line (InputError)."""
        read_study_note(input_path, note or os.environ.get("ONCOPLAN_NOTE"))

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        inp, out = Path(ctx.input_path), Path(ctx.output_path)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=inp, name="study_loader")
        selector = RuleSeriesSelectorOperator(self, organ=self.organ, series=self.series, name="ct_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="ct_volume")
        note = ClinicalNoteOperator(self, CountCondition(self, 1), input_folder=inp, note=self.note, name="note")
        ctv = CTVInferenceOperator(self, bundle_path=bundle_path(ctx.model_path, CTV_BUNDLE), name=CTV_BUNDLE)
        rtstruct = CTVRTStructWriterOperator(self, output_folder=out, name="rtstruct_writer")
        seg = CTVSegWriterOperator(self, output_folder=out, name="seg_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, ctv, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, ctv, {("image", "image")})
        self.add_flow(note, ctv, {("note", "note")})
        self.add_flow(ctv, rtstruct, {("mask", "mask")})
        self.add_flow(ctv, seg, {("mask", "mask")})

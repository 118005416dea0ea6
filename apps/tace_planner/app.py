"""TACE planning: pre-treatment liver CT study -> ranked TACE protocols as SR, DICOM-SEG and PDF (research use only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from oncoplan.operators.series_rules import series_override
from oncoplan.operators.series_selector import RuleSeriesSelectorOperator
from oncoplan.operators.tace_planning import SETTINGS_ENV, TacePlanningOperator, check_bundles, parse_settings
from oncoplan.operators.tace_writers import (
    TacePlanJSONWriterOperator,
    TacePlanSRWriterOperator,
    TaceReportWriterOperator,
    TaceSegWriterOperator,
)
from oncoplan.runtime.bundles import TACE_BUNDLES, bundle_path


class TacePlannerApp(Application):
    """DICOM in -> pre-treatment PVP (else AP) series -> volume -> world-model planning -> SR + SEG + PDF + JSON."""

    # `python -m` / `monai-deploy exec` options -> constructor keywords (apps/runner.py)
    cli_options: ClassVar[dict[str, str]] = {"--settings": "settings", "--series": "series"}
    organ = "liver"  # the series rules of this app (series_rules.py): pre-treatment study, PVP else AP

    def __init__(self, *args, settings: str | None = None, series: str | None = None, **kwargs) -> None:
        self.settings = settings or os.environ.get(SETTINGS_ENV)
        self.series = series_override(series)  # --series, else $ONCOPLAN_SERIES
        super().__init__(*args, **kwargs)
        parse_settings(self.settings)  # a bad value is one line before the graph is built

    @staticmethod
    def bundles(model_path: str | Path | None) -> dict[str, Path]:
        """The three bundles under MODELS (MODELS/tace_assistant, ...), else the shipped ones."""
        return {role: bundle_path(model_path, name) for role, name in TACE_BUNDLES.items()}

    @classmethod
    def check_models(cls, model_path: str | Path | None) -> None:
        check_bundles(cls.bundles(model_path))

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        inp, out = Path(ctx.input_path), Path(ctx.output_path)
        bundles = self.bundles(ctx.model_path)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=inp, name="study_loader")
        selector = RuleSeriesSelectorOperator(
            self, organ=self.organ, series=self.series, name="pre_treatment_ct_selector"
        )
        to_volume = DICOMSeriesToVolumeOperator(self, name="ct_volume")
        planner = TacePlanningOperator(self, bundles=bundles, settings=self.settings, name="tace_planner")
        sr = TacePlanSRWriterOperator(self, output_folder=out, name="plan_sr_writer")
        seg = TaceSegWriterOperator(self, output_folder=out, name="simulated_tumor_seg_writer")
        report = TaceReportWriterOperator(self, output_folder=out, name="pdf_report_writer")
        plan_json = TacePlanJSONWriterOperator(self, output_folder=out, name="plan_json_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, planner, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, planner, {("image", "image")})
        for writer in (sr, seg, report, plan_json):
            self.add_flow(planner, writer, {("plan", "plan")})

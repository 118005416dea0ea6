"""TACE planning: pre-treatment liver CT study (+ the patient's clinical data) -> ranked TACE protocols as SR,
DICOM-SEG and PDF (research use only).

Options (``oncoplan plan``, ``python -m oncoplan.apps.tace_planner``) and their variables for MAP runs:
``--settings`` ($ONCOPLAN_TACE_SETTINGS), ``--series`` ($ONCOPLAN_SERIES), ``--clinical FILE``
($ONCOPLAN_CLINICAL: a path or the JSON object; else clinical.json or an SR in the study, see
operators/clinical_data.py), ``--policy offline|openai|transformers`` ($ONCOPLAN_POLICY) with
``--allow-send`` ($ONCOPLAN_LLM_ALLOW_SEND=1), ``--llm-model`` ($ONCOPLAN_LLM_MODEL, or
$ONCOPLAN_LLM_MODEL_DIR for transformers), ``--llm-base-url`` ($ONCOPLAN_LLM_BASE_URL); the key only
from $OPENAI_API_KEY."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from oncoplan.operators.clinical_data import ClinicalDataOperator, read_clinical
from oncoplan.operators.series_rules import series_override
from oncoplan.operators.series_selector import RuleSeriesSelectorOperator
from oncoplan.operators.tace_planning import SETTINGS_ENV, TacePlanningOperator, check_bundles, parse_settings
from oncoplan.operators.tace_writers import (
    TacePlanJSONWriterOperator,
    TacePlanSRWriterOperator,
    TaceReportWriterOperator,
    TaceSegWriterOperator,
)
from oncoplan.planner.policy import PolicyChoice
from oncoplan.runtime.bundles import TACE_BUNDLES, bundle_path


def policy_choice(policy: str | None, allow_send: bool | str, model: str | None, base_url: str | None) -> PolicyChoice:
    """The app's policy from its options over the environment (PolicyChoice.resolve)."""
    send = allow_send is True or str(allow_send).lower() in ("1", "true", "yes")
    return PolicyChoice.resolve(policy, allow_send=send, model=model, base_url=base_url)


class TacePlannerApp(Application):
    """DICOM in -> pre-treatment PVP (else AP) series -> volume -> world-model planning -> SR + SEG + PDF + JSON."""

    # `python -m` / `monai-deploy exec` options -> constructor keywords (apps/runner.py)
    cli_options: ClassVar[dict[str, str]] = {
        "--settings": "settings",
        "--series": "series",
        "--clinical": "clinical",
        "--policy": "policy",
        "--llm-model": "llm_model",
        "--llm-base-url": "llm_base_url",
    }
    cli_flags: ClassVar[dict[str, str]] = {"--allow-send": "allow_send"}
    organ = "liver"  # the series rules of this app (series_rules.py): pre-treatment study, PVP else AP

    def __init__(
        self,
        *args,
        settings: str | None = None,
        series: str | None = None,
        clinical: str | None = None,
        policy: str | None = None,
        allow_send: bool | str = False,
        llm_model: str | None = None,
        llm_base_url: str | None = None,
        **kwargs,
    ) -> None:
        self.settings = settings or os.environ.get(SETTINGS_ENV)
        self.series = series_override(series)  # --series, else $ONCOPLAN_SERIES
        self.clinical = clinical  # else $ONCOPLAN_CLINICAL, clinical.json, an SR (read_clinical)
        super().__init__(*args, **kwargs)
        parse_settings(self.settings)  # a bad value is one line before the graph is built
        self.policy = policy_choice(policy, allow_send, llm_model, llm_base_url)

    @staticmethod
    def check_options(input_path: Path, options: dict) -> None:
        """The policy and the clinical data the graph will read, before it starts: a choice that cannot run or
        a bad clinical value is one line (InputError) and nothing is written."""
        policy_choice(
            options.get("policy"),
            options.get("allow_send", False),
            options.get("llm_model"),
            options.get("llm_base_url"),
        )
        read_clinical(input_path, options.get("clinical"))

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
        clinical = ClinicalDataOperator(
            self, CountCondition(self, 1), input_folder=inp, clinical=self.clinical, name="clinical_data"
        )
        planner = TacePlanningOperator(
            self, bundles=bundles, settings=self.settings, policy=self.policy, name="tace_planner"
        )
        sr = TacePlanSRWriterOperator(self, output_folder=out, name="plan_sr_writer")
        seg = TaceSegWriterOperator(self, output_folder=out, name="simulated_tumor_seg_writer")
        report = TaceReportWriterOperator(self, output_folder=out, name="pdf_report_writer")
        plan_json = TacePlanJSONWriterOperator(self, output_folder=out, name="plan_json_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, planner, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, planner, {("image", "image")})
        self.add_flow(clinical, planner, {("clinical", "clinical")})
        for writer in (sr, seg, report, plan_json):
            self.add_flow(planner, writer, {("plan", "plan")})

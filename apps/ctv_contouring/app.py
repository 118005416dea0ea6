"""CTV contouring: CT series + clinical note -> CTV as RTSTRUCT and DICOM-SEG (research use only).

Options (``oncoplan contour``, ``python -m oncoplan.apps.ctv_contouring``) and their variables for MAP runs:
``--note`` ($ONCOPLAN_NOTE), ``--series`` ($ONCOPLAN_SERIES), ``--note-reader rules|openai|transformers``
($ONCOPLAN_NOTE_READER; default rules, offline) with ``--allow-send`` ($ONCOPLAN_LLM_ALLOW_SEND=1),
``--llm-model`` ($ONCOPLAN_LLM_MODEL, or $ONCOPLAN_LLM_MODEL_DIR for transformers), ``--llm-base-url``
($ONCOPLAN_LLM_BASE_URL); the key only from $OPENAI_API_KEY (oncoplan/ctv/llm_note_reader.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from oncoplan.ctv.llm_note_reader import NoteReader
from oncoplan.operators.clinical_note import ClinicalNoteOperator, study_note_record
from oncoplan.operators.ctv_inference import CTVInferenceOperator
from oncoplan.operators.ctv_writers import CTVRTStructWriterOperator, CTVSegWriterOperator
from oncoplan.operators.series_rules import series_override
from oncoplan.operators.series_selector import RuleSeriesSelectorOperator
from oncoplan.runtime.bundles import CTV_BUNDLE, bundle_path


class CTVContouringApp(Application):
    """DICOM in -> series selection -> volume -> LLMSeg (image + note) -> RTSTRUCT + SEG."""

    # `python -m` / `monai-deploy exec` options -> constructor keywords (apps/runner.py)
    cli_options: ClassVar[dict[str, str]] = {
        "--note": "note",
        "--series": "series",
        "--note-reader": "note_reader",
        "--llm-model": "llm_model",
        "--llm-base-url": "llm_base_url",
    }
    cli_flags: ClassVar[dict[str, str]] = {"--allow-send": "allow_send"}
    organ = "breast"  # the series rules of this app (series_rules.py)

    def __init__(
        self,
        *args,
        note: str | None = None,
        series: str | None = None,
        note_reader: str | None = None,
        allow_send: bool | str = False,
        llm_model: str | None = None,
        llm_base_url: str | None = None,
        reading: dict | None = None,
        **kwargs,
    ) -> None:
        self.note = note or os.environ.get("ONCOPLAN_NOTE")
        self.series = series_override(series)  # --series, else $ONCOPLAN_SERIES
        self.reader = NoteReader.resolve(note_reader, allow_send=allow_send, model=llm_model, base_url=llm_base_url)
        self.reading = reading  # the note as check_options read it (the runner passes it on)
        super().__init__(*args, **kwargs)

    @staticmethod
    def check_options(input_path: Path, options: dict) -> None:
        """The note reader and the note the graph will read (--note, $ONCOPLAN_NOTE, clinical.json, a text SR),
        read before the graph starts: a reader that cannot run (an LLM without --allow-send) or a note that
        cannot be settled is one line (InputError). The reading is put into `options` as ``reading`` so that
        the graph uses it and an LLM is asked once."""
        reader = NoteReader.resolve(
            options.get("note_reader"),
            allow_send=options.get("allow_send", False),
            model=options.get("llm_model"),
            base_url=options.get("llm_base_url"),
        )
        note = options.get("note") or os.environ.get("ONCOPLAN_NOTE")
        options["reading"] = study_note_record(input_path, note, reader)

    def compose(self) -> None:
        ctx = Application.init_app_context(self.argv)
        inp, out = Path(ctx.input_path), Path(ctx.output_path)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=inp, name="study_loader")
        selector = RuleSeriesSelectorOperator(self, organ=self.organ, series=self.series, name="ct_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="ct_volume")
        note = ClinicalNoteOperator(
            self,
            CountCondition(self, 1),
            input_folder=inp,
            note=self.note,
            reader=self.reader,
            reading=self.reading,
            name="note",
        )
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

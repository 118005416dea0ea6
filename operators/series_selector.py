"""The apps' series selector: the SDK's operator, choosing by the series rules (series_rules.py)."""

from __future__ import annotations

from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from oncoplan.operators.series_rules import SeriesInfo, choose

ARTERIAL = "AP companion"  # the selection name of the arterial series beside the chosen portal-venous one


class RuleSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """The SDK's series selector with the rules above in place of its JSON rules: emits the one series
    `choose` takes for `organ` (breast: CTV contouring; liver: TACE planning), and logs why."""

    def __init__(self, *args, organ: str, series: str | None = None, **kwargs) -> None:
        self.organ, self.series = organ, series
        super().__init__(*args, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        # Not the SDK's compute: it logs the chosen SeriesInstanceUID, and log lines carry no UID.
        studies = op_input.receive(self.input_name_study_list)
        op_output.emit(self.filter(None, studies), self.output_name_selected_series)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        where = {}
        for study in dicom_study_list or []:
            for s in study.get_all_series():
                datasets = [i.get_native_sop_instance() for i in s.get_sop_instances()]
                if datasets:
                    where[str(s.SeriesInstanceUID)] = (study, s, SeriesInfo.of(datasets))
        choice = choose([info for _, _, info in where.values()], self.organ, self.series)
        choice.log()
        study, series, _ = where[choice.series.uid]
        one = StudySelectedSeries(study)
        one.add_selected_series(SelectedSeries(choice.phase or "CT", series))
        if choice.arterial is not None:  # second: the SDK's series-to-volume operator converts the first only
            one.add_selected_series(SelectedSeries(ARTERIAL, where[choice.arterial.uid][1]))
        return [one]

"""The TACE patient's clinical data: the schema (units, validation, Child-Pugh from its parts), the
guideline flags, the sources in their documented order, the values reaching the response model, and
the policy choice. No graph runs here (tests/test_tace_app.py runs the app with all of it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from oncoplan.errors import InputError
from oncoplan.operators.clinical_data import CLINICAL_ENV, read_clinical
from oncoplan.planner.policy import ENV_ALLOW_SEND, ENV_POLICY, PolicyChoice
from oncoplan.planner.response_heuristic import ResponseCox, ResponseRiskScorer
from oncoplan.tace.actions import Protocol
from oncoplan.tace.patient import ClinicalData, flags, read_text
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets, stable_uid
from oncoplan.training.synth.geometry import Grid

from .helpers import text_sr
from .test_planner_policy import tiny_chat_model  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
TABLE = Path("/work/shared/data/hcc_tace_seg/clinical.csv")
RESPONSE_MODEL = ROOT / "bundles" / "tace_survival" / "models" / "response_cox.json"


def read(data: dict) -> ClinicalData:
    return ClinicalData.from_mapping(data, "c.json")[0]


def parts(bili: float, alb: float, inr: float, ascites: str, enceph: str) -> dict:
    return {"bilirubin_mg_dl": bili, "albumin_g_dl": alb, "inr": inr, "ascites": ascites, "encephalopathy": enceph}


@pytest.mark.parametrize(
    ("components", "score", "klass"),
    [
        (parts(1.0, 4.0, 1.1, "none", "none"), 5, "A"),
        (parts(2.0, 3.5, 1.7, "none", "none"), 8, "B"),  # 2 mg/dL and 1.7 are the second band's lower edges
        (parts(1.9, 3.6, 1.69, "mild", "none"), 6, "A"),
        (parts(3.1, 2.7, 2.4, "none", "none"), 11, "C"),
        (parts(1.0, 3.0, 1.0, "mild", "grade 1-2"), 8, "B"),
        (parts(3.5, 2.5, 2.5, "moderate-severe", "grade 3-4"), 15, "C"),
    ],
)
def test_the_child_pugh_class_is_computed_from_its_components(components: dict, score: int, klass: str) -> None:
    data = read(components)
    assert data.child_pugh_points() == score
    assert data.child_pugh_class() == (klass, f"computed from components (score {score})")
    assert data.row()["CPS"] == klass


def test_a_class_that_disagrees_with_its_components_is_refused_and_one_short_of_them_is_given() -> None:
    with pytest.raises(InputError, match=r"^c\.json: child_pugh: class A given, but its components give C"):
        read({"child_pugh": "A", **parts(3.5, 2.5, 2.5, "moderate-severe", "grade 3-4")})
    partial = read({"child_pugh": "B", "bilirubin_mg_dl": 1.0})  # four components missing: the class stands
    assert partial.child_pugh_points() is None and partial.child_pugh_class() == ("B", "given")
    assert read({}).child_pugh_class() == (None, "not given")


def test_a_row_of_the_real_table_reads_with_its_own_column_names_and_codes() -> None:
    from oncoplan.training.tcia_clinical import load_clinical

    row = load_clinical(TABLE).loc["HCC_002"].to_dict()
    data, ignored = ClinicalData.from_mapping(row, "clinical.csv")
    assert (data.age, data.sex, data.child_pugh, data.afp_ng_ml, data.bclc) == (72, "M", "A", 2910.5, "C")
    assert data.vascular_invasion is True and data.portal_vein_thrombosis is True
    assert data.extrahepatic_spread is False and data.ecog == 0 and data.tumor_nodularity == "multinodular"
    assert data.largest_tumor_cm is None  # empty in the table: not given
    assert "OS" in ignored and "chemotherapy" in ignored
    assert data.row() == {
        "CPS": "A",
        "AFP": 2910.5,
        "Vascular invasion": 1,
        "age": 72,
        "Sex": 1,
        "tumor_nodul": "multinodular",
    }


def test_units_are_converted_to_the_schema_units() -> None:
    data = read({"bilirubin": "51.3 umol/L", "albumin": "31 g/L", "AFP": "20 ug/L", "largest tumor": "45 mm"})
    assert data.bilirubin_mg_dl == pytest.approx(3.0) and data.albumin_g_dl == pytest.approx(3.1)
    assert read({"serum creatinine": "176.8 umol/L"}).creatinine_mg_dl == pytest.approx(2.0)
    # The micro sign typed as the Greek mu reads the same; mmol/L and clearance per 1.73 m2 or per second too.
    assert read({"creatinine": "176.8 \u03bcmol/L"}).creatinine_mg_dl == pytest.approx(2.0)
    assert read({"creatinine": "0.1768 mmol/L"}).creatinine_mg_dl == pytest.approx(2.0)
    assert read({"CrCl": "45 mL/min/1.73 m2"}).creatinine_clearance_ml_min == 45.0
    assert read({"CrCl": "0.5 mL/s"}).creatinine_clearance_ml_min == pytest.approx(30.0)
    assert data.afp_ng_ml == 20.0 and data.largest_tumor_cm == pytest.approx(4.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bilirubin_mg_dl": "high"}, "c.json: bilirubin_mg_dl: expected a number (mg/dL), got 'high'"),
        ({"bilirubin_mg_dl": "2 mmol/L"}, "c.json: bilirubin_mg_dl: unit 'mmol/l' not understood"),
        ({"albumin_g_dl": 35}, "c.json: albumin_g_dl: 35 g/dL is outside 0.5-7 g/dL"),
        ({"afp_ng_ml": -4}, "c.json: afp_ng_ml: -4 ng/mL is outside"),
        ({"child_pugh": "D"}, "c.json: child_pugh: expected one of A, B, C, got 'D'"),
        ({"CPS": "X"}, "c.json: child_pugh: expected one of A, B, C, got 'X'"),
        ({"ascites": "lots"}, "c.json: ascites: expected one of none, mild, moderate-severe"),
        ({"vascular_invasion": "maybe"}, "c.json: vascular_invasion: expected true or false"),
        ({"ecog": 1.5}, "c.json: ecog: expected a whole number"),
        ({"age": 7}, "c.json: age: 7 years is outside 18-120 years"),
        ({"creatinine": "2 g/L"}, "c.json: creatinine_mg_dl: unit 'g/l' not understood"),
        ({"creatinine clearance": -5}, "c.json: creatinine_clearance_ml_min: -5 mL/min is outside 0-300 mL/min"),
        ({"AFP": 10, "afp_ng_ml": 12}, "c.json: afp_ng_ml: given twice with different values"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        read(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_contraindications_and_cautions_follow_the_guideline_thresholds() -> None:
    def codes(data: dict) -> dict[str, str]:
        return {f.code: f.level for f in flags(read(data))}

    assert codes({"child_pugh": "A", "bilirubin_mg_dl": 1.0, "ecog": 0}) == {}
    assert codes({"child_pugh": "C"}) == {"child_pugh_c": "contraindication"}
    assert codes(parts(1.0, 3.0, 1.0, "mild", "grade 1-2")) == {"child_pugh_b8": "contraindication"}  # B8
    assert codes({"main_portal_vein_invasion": True, "portal_vein_thrombosis": True}) == {
        "main_portal_vein": "contraindication"
    }
    assert codes({"Portal Vein Thrombosis": 1}) == {"portal_vein_thrombosis": "caution"}
    assert codes({"Metastasis": 1}) == {"extrahepatic_spread": "contraindication"}
    assert codes({"bilirubin_mg_dl": 3.2}) == {"bilirubin": "contraindication"}
    assert codes({"bilirubin_mg_dl": 2.5}) == {"bilirubin": "caution"}
    assert codes({"bilirubin_mg_dl": 3.0}) == {"bilirubin": "caution"}  # "> 3 mg/dL": 3.0 is not above
    assert codes({"ecog": 3}) == {"ecog": "contraindication"}
    assert codes({"bclc": "D"}) == {"bclc_d": "contraindication"}
    assert codes({"largest_tumor_cm": 11}) == {"large_tumor": "caution"}
    # Renal insufficiency: creatinine >= 2 mg/dL or clearance < 30 mL/min (Raoul et al. 2011, absolute).
    assert codes({"creatinine_mg_dl": 2.0}) == {"renal_insufficiency": "contraindication"}
    assert codes({"creatinine_mg_dl": 1.9, "creatinine_clearance_ml_min": 30}) == {}
    assert codes({"creatinine_clearance_ml_min": 29}) == {"renal_insufficiency": "contraindication"}
    assert codes({"eGFR": "25 mL/min/1.73 m2"}) == {"renal_insufficiency": "contraindication"}
    assert codes({"eGFR": 30}) == {}
    both = flags(read({"creatinine": "2.4 mg/dL", "CrCl": 25}))
    assert [f.text for f in both] == [
        "renal insufficiency: creatinine 2.4 mg/dL >= 2 mg/dL, creatinine clearance 25 mL/min < 30 mL/min"
    ]
    # Main portal vein invasion implies vascular invasion for the models.
    assert read({"main_portal_vein_invasion": True}).row() == {"Vascular invasion": 1}


def test_the_clinical_values_reach_the_response_model_instead_of_the_medians() -> None:
    model = ResponseCox.load(RESPONSE_MODEL)
    scorer = ResponseRiskScorer(model, (1.0, 1.0, 1.0), "layout")
    protocols = [Protocol.parse("Cisplatin; Lipiodol"), Protocol.parse("Cisplatin; Doxorubicin; Lipiodol")]
    residual = np.array([[5.0, 6.0], [4.0, 4.5]])
    patient = read({"child_pugh": "C", "afp_ng_ml": 999.0, "vascular_invasion": True}).row()
    without = scorer.risk(residual, protocols, 30.0, None)
    with_data = scorer.risk(residual, protocols, 30.0, patient)
    c, m = model.coef, model.median
    shared = c["Child-Pugh"] * (2 - m["Child-Pugh"]) + c["log10 AFP"] * (math.log10(1000.0) - m["log10 AFP"])
    shared += c["vascular invasion"] * (1 - m["vascular invasion"])
    for i, protocol in enumerate(protocols):
        drugs = len(protocol.drugs)
        expected = shared + c["drugs x Child-Pugh"] * drugs * (2 - m["Child-Pugh"])
        assert with_data[i] - without[i] == pytest.approx(np.full(2, expected))
    used = model.covariates_used(patient)
    assert {k: v["imputed"] for k, v in used.items()} == {
        "Child-Pugh": False,
        "log10 AFP": False,
        "vascular invasion": False,
    }
    imputed = model.covariates_used(read({"afp_ng_ml": 5.0}).row())
    assert [v["field"] for v in imputed.values() if v["imputed"]] == ["child_pugh", "vascular_invasion"]
    assert imputed["Child-Pugh"]["reads_as"] == "Child-Pugh A" and imputed["log10 AFP"]["reads_as"] == "AFP 5 ng/mL"


# -- sources ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct() -> list:
    grid = Grid.centred((2, 16, 16), (5.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    patient = Patient("PID-1", "DOE^JO", "19500101", "M", 70)
    study = Study(stable_uid("clin", "study"), "20200101", "101010", "ACC1", "S1", "CT")
    series = Series(stable_uid("clin", "series"), 2, "PVP", stable_uid("clin", "for"), "ABDOMEN")
    return ct_datasets(np.zeros(grid.shape), grid, patient, study, series)


def _study(folder: Path, ct: list) -> Path:
    folder.mkdir(parents=True)
    for i, ds in enumerate(ct):
        ds.save_as(folder / f"ct{i}.dcm", enforce_file_format=True)
    return folder


def structured_sr(ct, values: dict[tuple[str, str], tuple[float, str]]):
    items = []
    for (code, meaning), (value, unit) in values.items():
        items.append(
            hd.sr.NumContentItem(
                name=hd.sr.CodedConcept(code, "LN", meaning),
                value=value,
                unit=hd.sr.CodedConcept(unit, "UCUM", unit),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("11502-2", "LN", "Laboratory report"))
    root.ContentSequence = items
    return hd.sr.EnhancedSR(
        evidence=[ct],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=8,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lab",
    )


def test_sources_follow_the_documented_order(tmp_path: Path, ct: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLINICAL_ENV, raising=False)
    study = _study(tmp_path / "case" / "pre", ct)
    assert read_clinical(study).source == "none" and read_clinical(study).data.is_empty()
    # 4. a text SR: `name: value` lines; others skipped
    text_sr(ct[0], "History: HCV cirrhosis.\nChild-Pugh: B; AFP: 350 ng/mL; BCLC: B").save_as(study / "note.dcm")
    reading = read_clinical(study)
    assert reading.source == "a text SR in the study"
    assert (reading.data.child_pugh, reading.data.afp_ng_ml, reading.data.bclc) == ("B", 350.0, "B")
    # 3. a structured SR (NUM items, LOINC codes, UCUM units) comes before text in the same pass
    labs = {
        ("1975-2", "Bilirubin.total"): (51.3, "umol/L"),
        ("1751-7", "Albumin"): (3.1, "g/dL"),
        ("6301-6", "INR"): (1.2, "{INR}"),
        ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma"): (221.0, "umol/L"),
        ("62238-1", "Glomerular filtration rate/1.73 sq M.predicted"): (28.0, "mL/min/{1.73_m2}"),
    }
    structured_sr(ct[0], labs).save_as(study / "a_labs.dcm")
    reading = read_clinical(study)
    assert reading.source == "a structured SR in the study"
    assert (reading.data.bilirubin_mg_dl, reading.data.albumin_g_dl, reading.data.inr) == (3.0, 3.1, 1.2)
    assert reading.data.creatinine_mg_dl == pytest.approx(2.5) and reading.data.egfr_ml_min == 28.0
    # 2. clinical.json beside the input folder, then in it
    (study.parent / "clinical.json").write_text(json.dumps({"note": "left breast", "CPS": "C"}))
    reading = read_clinical(study)
    assert (reading.source, reading.data.child_pugh, reading.ignored) == ("clinical.json", "C", ["note"])
    (study / "clinical.json").write_text(json.dumps({"child_pugh": "A"}))
    assert read_clinical(study).data.child_pugh == "A"
    # 1. the environment (a path or the JSON object), then the file given
    monkeypatch.setenv(CLINICAL_ENV, json.dumps({"afp_ng_ml": 7}))
    reading = read_clinical(study)
    assert (reading.source, reading.data.afp_ng_ml, reading.data.child_pugh) == (f"${CLINICAL_ENV}", 7.0, None)
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"ecog": 1, "PatientID": "PID-1"}))
    reading = read_clinical(study, given)
    assert (reading.source, reading.data.ecog, reading.identifiers) == (
        "the --clinical file",
        1,
        {"PatientID": "PID-1"},
    )
    # A bad value names the source file and the field; so does an unreadable file.
    given.write_text(json.dumps({"inr": "fast"}))
    with pytest.raises(InputError, match=rf"^{given}: inr: expected a number"):
        read_clinical(study, given)
    given.write_text("{not json")
    with pytest.raises(InputError, match=rf"^{given}: not readable JSON"):
        read_clinical(study, given)
    monkeypatch.setenv(CLINICAL_ENV, "[1]")  # not an object: read as a path
    with pytest.raises(InputError, match=r"^\[1\]: clinical data file not found"):
        read_clinical(study)


def test_a_text_sr_value_that_is_bad_is_refused_naming_the_sr() -> None:
    with pytest.raises(InputError, match=r"^note\.dcm: ascites: expected one of"):
        read_text("Ascites: a little", "note.dcm")
    assert read_text("Seen in clinic. No complaints.", "note.dcm") is None


# -- policy choice ------------------------------------------------------------------------------------


def test_the_policy_is_a_choice_and_sending_is_opt_in(tmp_path: Path) -> None:
    assert PolicyChoice.resolve(env={}).kind == "offline"
    with pytest.raises(InputError, match="opt in with --allow-send"):
        PolicyChoice.resolve("openai", env={"OPENAI_API_KEY": "k"})
    with pytest.raises(InputError, match="no API key"):
        PolicyChoice.resolve("openai", allow_send=True, env={})
    env = {ENV_POLICY: "openai", ENV_ALLOW_SEND: "1", "OPENAI_API_KEY": "sk-SECRET-42"}
    choice = PolicyChoice.resolve(env={**env, "ONCOPLAN_LLM_BASE_URL": "http://h/v1"})
    assert (choice.kind, choice.llm.base_url, choice.llm.model, choice.label()) == (
        "openai",
        "http://h/v1",
        "gpt-4o",
        "openai:gpt-4o",
    )
    assert "SECRET" not in json.dumps(choice.to_dict()) + repr(choice)  # the key is never recorded
    with pytest.raises(InputError, match="local model folder"):
        PolicyChoice.resolve("transformers", model=str(tmp_path / "absent"), env={})
    with pytest.raises(InputError, match="unknown policy 'gpt'"):
        PolicyChoice.resolve("gpt", env={})
    with pytest.raises(InputError, match="not a Hugging Face model folder"):
        PolicyChoice.resolve("transformers", model=str(tmp_path), env={})
    # A model folder that does not load: the offline policy plans, with the reason.
    (tmp_path / "config.json").write_text("{}")
    broken = PolicyChoice.resolve("transformers", model=str(tmp_path), env={})
    policy = broken.build()
    assert policy.source == "offline" and "local model did not load" in policy.last_fallback_reason


def test_a_local_model_folder_is_a_transformers_policy(tmp_path: Path, tiny_chat_model) -> None:  # noqa: F811
    model, tokenizer = tiny_chat_model
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    choice = PolicyChoice.resolve(env={ENV_POLICY: "transformers", "ONCOPLAN_LLM_MODEL_DIR": str(tmp_path)})
    policy = choice.build()
    assert type(policy).__name__ == "TransformersPolicy" and policy.source == f"transformers:{tmp_path}"
    assert choice.to_dict() == {
        "kind": "transformers",
        "label": f"transformers:{tmp_path.name}",
        "model_dir": str(tmp_path),
    }

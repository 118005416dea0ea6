"""The clinical data of one TACE patient: one schema, validated, with units; Child-Pugh from its parts;
the guideline contraindications and cautions.

Fields (JSON names; the HCC-TACE-Seg column each one reads where the table has it; units):

===============================  ===========================  ======================================
field                            HCC-TACE-Seg column          value
===============================  ===========================  ======================================
``age``                          ``age``                      years, 18-120
``sex``                          ``Sex`` (1 male, 2 female)   ``M`` | ``F``
``child_pugh``                   ``CPS``                      class ``A`` | ``B`` | ``C``
``bilirubin_mg_dl``              -                            total bilirubin, mg/dL (or "34 umol/L")
``albumin_g_dl``                 -                            serum albumin, g/dL (or "31 g/L")
``inr``                          -                            INR, no unit
``ascites``                      -                            ``none`` | ``mild`` | ``moderate-severe``
``encephalopathy``               -                            ``none`` | ``grade 1-2`` | ``grade 3-4``
``creatinine_mg_dl``             -                            serum creatinine, mg/dL (or "177 umol/L")
``creatinine_clearance_ml_min``  -                            creatinine clearance, mL/min (or mL/s)
``egfr_ml_min``                  -                            estimated GFR, mL/min/1.73 m2
``afp_ng_ml``                    ``AFP``                      alpha-fetoprotein, ng/mL (= ug/L)
``bclc``                         ``BCLC`` (``Stage-A``)       ``0`` | ``A`` | ``B`` | ``C`` | ``D``
``ecog``                         ``PS_bclc_0_0_1-2_1_3-4_3``  ECOG performance status 0-4
``vascular_invasion``            ``Vascular invasion``        macrovascular invasion, true/false
``portal_vein_thrombosis``       ``Portal Vein Thrombosis``   any portal vein tumor thrombus, true/false
``main_portal_vein_invasion``    -                            tumor in the main portal trunk, true/false
``extrahepatic_spread``          ``Metastasis``               true/false
``tumor_count``                  -                            number of nodules, >= 1
``tumor_nodularity``             ``tumor_nodul``              ``uninodular`` | ``multinodular``
``largest_tumor_cm``             ``Tr_Size``                  largest diameter, cm
``prior_treatments``             -                            list of short strings (never sent to an LLM)
===============================  ===========================  ======================================

Child-Pugh: the class is computed from its five components (bilirubin, albumin, INR, ascites,
encephalopathy; Pugh et al. 1973 points, 5-6 A, 7-9 B, 10-15 C) when all five are given; a class
given as well must agree (else the field is refused, not silently chosen). The table's
``PS_bclc_0_0_1-2_1_3-4_3`` codes ECOG 1-2 as 1 and 3-4 as 3: read as 1 and 3.

Which fields the planner's models read (the response Cox model: Child-Pugh, AFP, vascular invasion;
the LLM policy: age, sex, Child-Pugh, AFP, tumor size and nodularity, vascular invasion) is
:meth:`ClinicalData.row`: the table's column names, as the models were fitted on them. A value that
is not valid is an :class:`~oncoplan.errors.InputError` naming where it came from and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from oncoplan.errors import InputError

ASCITES = ("none", "mild", "moderate-severe")
ENCEPHALOPATHY = ("none", "grade 1-2", "grade 3-4")
BCLC = ("0", "A", "B", "C", "D")
SEXES = ("M", "F")
CLASSES = ("A", "B", "C")

PER_BSA = {"ml/min/1.73m2": 1.0, "ml/min/1.73m²": 1.0, "ml/min/{1.73_m2}": 1.0, "ml/min/1.73m^2": 1.0}
# field -> (unit named in the docs, {accepted unit spelling: factor to the field's unit}, (low, high))
NUMBERS: dict[str, tuple[str, dict[str, float], tuple[float, float]]] = {
    "age": ("years", {"": 1.0, "y": 1.0, "years": 1.0, "yr": 1.0}, (18.0, 120.0)),
    "bilirubin_mg_dl": ("mg/dL", {"": 1.0, "mg/dl": 1.0, "umol/l": 1 / 17.1, "µmol/l": 1 / 17.1}, (0.0, 60.0)),
    "albumin_g_dl": ("g/dL", {"": 1.0, "g/dl": 1.0, "g/l": 0.1}, (0.5, 7.0)),
    "inr": ("no unit", {"": 1.0, "{inr}": 1.0, "1": 1.0}, (0.5, 15.0)),
    # Creatinine: 88.4 umol/L per mg/dL (molar mass 113.12 g/mol).
    "creatinine_mg_dl": (
        "mg/dL",
        {"": 1.0, "mg/dl": 1.0, "umol/l": 1 / 88.4, "µmol/l": 1 / 88.4, "mmol/l": 1000 / 88.4},
        (0.05, 30.0),
    ),
    # A clearance or eGFR is often reported per 1.73 m2 of body surface: read as the same mL/min.
    "creatinine_clearance_ml_min": ("mL/min", {"": 1.0, "ml/min": 1.0, **PER_BSA, "ml/s": 60.0}, (0.0, 300.0)),
    "egfr_ml_min": ("mL/min/1.73 m2", {"": 1.0, "ml/min": 1.0, **PER_BSA}, (0.0, 300.0)),
    "afp_ng_ml": ("ng/mL", {"": 1.0, "ng/ml": 1.0, "ug/l": 1.0, "µg/l": 1.0}, (0.0, 1e7)),
    "ecog": ("ECOG 0-4", {"": 1.0}, (0.0, 4.0)),
    "tumor_count": ("nodules", {"": 1.0}, (1.0, 100.0)),
    "largest_tumor_cm": ("cm", {"": 1.0, "cm": 1.0, "mm": 0.1}, (0.1, 30.0)),
}
INTEGERS = ("age", "ecog", "tumor_count")
FLAGS = ("vascular_invasion", "portal_vein_thrombosis", "main_portal_vein_invasion", "extrahepatic_spread")
CHOICES: dict[str, tuple[str, ...]] = {
    "sex": SEXES,
    "child_pugh": CLASSES,
    "ascites": ASCITES,
    "encephalopathy": ENCEPHALOPATHY,
    "bclc": BCLC,
    "tumor_nodularity": ("uninodular", "multinodular"),
}

# The HCC-TACE-Seg column of a field (a row of that table, or a cohort.csv, reads as it is).
TCIA_COLUMNS: dict[str, str] = {
    "age": "age",
    "sex": "Sex",
    "child_pugh": "CPS",
    "afp_ng_ml": "AFP",
    "bclc": "BCLC",
    "ecog": "PS_bclc_0_0_1-2_1_3-4_3",
    "vascular_invasion": "Vascular invasion",
    "portal_vein_thrombosis": "Portal Vein Thrombosis",
    "extrahepatic_spread": "Metastasis",
    "tumor_nodularity": "tumor_nodul",
    "largest_tumor_cm": "Tr_Size",
}
# Other names a field is written with (SR concept names, notes); matched case- and space-insensitively.
LABELS: dict[str, tuple[str, ...]] = {
    "age": ("age", "patient age"),
    "sex": ("sex", "gender", "patient sex"),
    "child_pugh": ("child-pugh", "child-pugh class", "child pugh", "child pugh class", "cps"),
    "bilirubin_mg_dl": ("bilirubin", "total bilirubin", "bilirubin.total", "bilirubin total"),
    "albumin_g_dl": ("albumin", "serum albumin"),
    "inr": ("inr", "international normalized ratio", "inr in platelet poor plasma by coagulation assay"),
    "ascites": ("ascites",),
    "encephalopathy": ("encephalopathy", "hepatic encephalopathy"),
    "creatinine_mg_dl": ("creatinine", "serum creatinine", "creatinine serum", "creat"),
    "creatinine_clearance_ml_min": ("creatinine clearance", "crcl", "cockcroft-gault clearance"),
    "egfr_ml_min": ("egfr", "estimated gfr", "gfr", "estimated glomerular filtration rate"),
    "afp_ng_ml": ("afp", "alpha-fetoprotein", "alpha fetoprotein", "alpha-1-fetoprotein"),
    "bclc": ("bclc", "bclc stage"),
    "ecog": ("ecog", "performance status", "ecog performance status", "ps"),
    "vascular_invasion": ("vascular invasion", "macrovascular invasion"),
    "portal_vein_thrombosis": ("portal vein thrombosis", "pvt", "portal vein tumor thrombus"),
    "main_portal_vein_invasion": ("main portal vein invasion", "main portal vein thrombosis"),
    "extrahepatic_spread": ("extrahepatic spread", "metastasis", "extrahepatic metastasis"),
    "tumor_count": ("tumor count", "number of tumors", "number of nodules", "tumour count"),
    "tumor_nodularity": ("nodularity", "tumor nodularity"),
    "largest_tumor_cm": ("largest tumor", "largest tumor diameter", "tumor size", "largest tumour"),
    "prior_treatments": ("prior treatments", "prior treatment", "previous treatments"),
}
# LOINC codes of the laboratory values, for NUM items of a structured SR.
LOINC = {
    "1975-2": "bilirubin_mg_dl",
    "1751-7": "albumin_g_dl",
    "6301-6": "inr",
    "1834-1": "afp_ng_ml",
    "2160-0": "creatinine_mg_dl",  # Creatinine [Mass/volume] in Serum or Plasma
    "14682-9": "creatinine_mg_dl",  # Creatinine [Moles/volume] in Serum or Plasma (SI labs; umol/L)
    "2164-2": "creatinine_clearance_ml_min",  # Creatinine renal clearance in 24 hour urine and Serum or Plasma
    # eGFR (GFR/BSA predicted from creatinine): MDRD, CKD-EPI 2009, CKD-EPI 2021.
    "33914-3": "egfr_ml_min",
    "62238-1": "egfr_ml_min",
    "98979-8": "egfr_ml_min",
}


def _key(text: str) -> str:
    return re.sub(r"[\s_]+", " ", str(text).strip().lower())


_BY_NAME: dict[str, str] = {}
for _field, _labels in LABELS.items():
    for _name in (_field, _field.replace("_", " "), TCIA_COLUMNS.get(_field, _field), *_labels):
        _BY_NAME[_key(_name)] = _field


def field_named(name: str) -> str | None:
    """The schema field a key names (the field itself, its table column or a label), else None."""
    return _BY_NAME.get(_key(name))


@dataclass(frozen=True)
class ClinicalData:
    """One patient's clinical data; None = not given. See the module doc for fields and units."""

    age: int | None = None
    sex: str | None = None
    child_pugh: str | None = None
    bilirubin_mg_dl: float | None = None
    albumin_g_dl: float | None = None
    inr: float | None = None
    ascites: str | None = None
    encephalopathy: str | None = None
    creatinine_mg_dl: float | None = None
    creatinine_clearance_ml_min: float | None = None
    egfr_ml_min: float | None = None
    afp_ng_ml: float | None = None
    bclc: str | None = None
    ecog: int | None = None
    vascular_invasion: bool | None = None
    portal_vein_thrombosis: bool | None = None
    main_portal_vein_invasion: bool | None = None
    extrahepatic_spread: bool | None = None
    tumor_count: int | None = None
    tumor_nodularity: str | None = None
    largest_tumor_cm: float | None = None
    prior_treatments: tuple[str, ...] | None = None

    # ---------------------------------------------------------------- reading

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> tuple[ClinicalData, list[str]]:
        """(the validated data, the keys that name no field) of a JSON object or table row; a bad value is
        an InputError ``"{where}: {field}: {problem}"``. Keys may be the field names, the table's columns
        or the labels above; empty values and ``NA`` mean not given."""
        values: dict[str, Any] = {}
        ignored: list[str] = []
        for key, raw in data.items():
            name = field_named(str(key))
            if name is None:
                ignored.append(str(key))
                continue
            if _missing(raw):
                continue
            value = parse_value(name, raw, where)
            if name in values and values[name] != value:
                raise InputError(f"{where}: {name}: given twice with different values ({key!r})")
            values[name] = value
        data_ = cls(**values)
        data_.child_pugh_class(where)  # a class that disagrees with its components is refused here
        return data_, ignored

    # ---------------------------------------------------------------- derived values

    def child_pugh_points(self) -> int | None:
        """Child-Pugh score (5-15) from the five components; None unless all five are given."""
        parts = (self.bilirubin_mg_dl, self.albumin_g_dl, self.inr, self.ascites, self.encephalopathy)
        if any(p is None for p in parts):
            return None
        bili, alb, inr = self.bilirubin_mg_dl, self.albumin_g_dl, self.inr
        points = 1 if bili < 2 else 2 if bili <= 3 else 3  # type: ignore[operator]
        points += 1 if alb > 3.5 else 2 if alb >= 2.8 else 3  # type: ignore[operator]
        points += 1 if inr < 1.7 else 2 if inr <= 2.3 else 3  # type: ignore[operator]
        points += ASCITES.index(self.ascites) + 1  # type: ignore[arg-type]
        points += ENCEPHALOPATHY.index(self.encephalopathy) + 1  # type: ignore[arg-type]
        return points

    def child_pugh_class(self, where: str = "clinical data") -> tuple[str | None, str]:
        """(class, how it is known: "given", "computed from components (score N)" or "not given")."""
        points = self.child_pugh_points()
        computed = None if points is None else ("A" if points <= 6 else "B" if points <= 9 else "C")
        if computed and self.child_pugh and computed != self.child_pugh:
            raise InputError(
                f"{where}: child_pugh: class {self.child_pugh} given, but its components give {computed} "
                f"(score {points}); correct one of them"
            )
        if computed:
            return computed, f"computed from components (score {points})"
        return (self.child_pugh, "given") if self.child_pugh else (None, "not given")

    def any_vascular_invasion(self) -> bool | None:
        """Vascular invasion as the models read it: given, else implied by a portal vein thrombus."""
        if self.vascular_invasion is not None:
            return self.vascular_invasion
        if self.main_portal_vein_invasion or self.portal_vein_thrombosis:
            return True
        return None

    def row(self) -> dict[str, Any]:
        """The HCC-TACE-Seg columns the models read (only those known): CPS, AFP, Vascular invasion,
        age, Sex, Tr_Size, tumor_nodul."""
        cps, _ = self.child_pugh_class()
        vi = self.any_vascular_invasion()
        nodularity = self.tumor_nodularity
        if nodularity is None and self.tumor_count is not None:
            nodularity = "uninodular" if self.tumor_count == 1 else "multinodular"
        row = {
            "CPS": cps,
            "AFP": self.afp_ng_ml,
            "Vascular invasion": None if vi is None else int(vi),
            "age": self.age,
            "Sex": None if self.sex is None else SEXES.index(self.sex) + 1,
            "Tr_Size": self.largest_tumor_cm,
            "tumor_nodul": nodularity,
        }
        return {k: v for k, v in row.items() if v is not None}

    def given(self) -> dict[str, Any]:
        """The fields given, JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    def is_empty(self) -> bool:
        return not self.given()


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().upper() in ("", "NA", "N/A", "UNKNOWN")


_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
_TRUE = {"1", "true", "yes", "y", "present", "positive"}
_FALSE = {"0", "false", "no", "n", "absent", "negative", "none"}


def parse_value(name: str, raw: Any, where: str) -> Any:
    """One field's value, validated (the HCC-TACE-Seg table's codes are understood)."""
    bad = f"{where}: {name}:"
    if name in NUMBERS:
        unit, units, (lo, hi) = NUMBERS[name]
        if isinstance(raw, bool):
            raise InputError(f"{bad} expected a number ({unit}), got {raw!r}")
        if isinstance(raw, (int, float)):
            number, given_unit = float(raw), ""
        else:
            m = _NUMBER.match(str(raw))
            if not m:
                raise InputError(f"{bad} expected a number ({unit}), got {str(raw)[:40]!r}")
            # The micro sign is typed as U+00B5 or as the Greek mu U+03BC: one spelling.
            number, given_unit = float(m.group(1)), m.group(2).lower().replace(" ", "").replace("\u03bc", "µ")
        if given_unit not in units:
            known = ", ".join(u for u in units if u) or "none"
            raise InputError(f"{bad} unit {given_unit!r} not understood (units: {known})")
        value = number * units[given_unit]
        if not math.isfinite(value) or not lo <= value <= hi:
            raise InputError(f"{bad} {number:g} {given_unit or unit} is outside {lo:g}-{hi:g} {unit}")
        if name in INTEGERS:
            if value != int(value):
                raise InputError(f"{bad} expected a whole number, got {number:g}")
            return int(value)
        return round(value, 4)
    if name in FLAGS:
        text = str(raw).strip().lower()
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        if text.endswith(".0"):
            text = text[:-2]
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InputError(f"{bad} expected true or false (or 1/0, yes/no), got {str(raw)[:40]!r}")
    if name in CHOICES:
        return _choice(name, raw, bad)
    if name == "prior_treatments":
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise InputError(f"{bad} expected a list of short texts")
        items = tuple(i.strip() for i in items if i.strip())
        if any(len(i) > 200 for i in items) or len(items) > 20:
            raise InputError(f"{bad} at most 20 entries of at most 200 characters")
        return items
    raise InputError(f"{bad} not a field of the clinical schema")


def _choice(name: str, raw: Any, bad: str) -> str:
    allowed = CHOICES[name]
    text = str(raw).strip()
    if isinstance(raw, float) and raw == int(raw):
        text = str(int(raw))
    low = text.lower()
    if name == "sex":
        value = {"1": "M", "m": "M", "male": "M", "2": "F", "f": "F", "female": "F"}.get(low)
    elif name == "child_pugh":
        m = re.fullmatch(r"(?:child[- ]?pugh\s*)?(?:class\s*)?([abc])(?:\s*\d{1,2})?", low)
        value = m.group(1).upper() if m else None
    elif name == "bclc":
        m = re.fullmatch(r"(?:bclc\s*)?(?:stage)?[\s_-]*([0abcd])", low)
        value = m.group(1).upper() if m else None
    elif name == "ascites":
        value = {"none": "none", "absent": "none", "no": "none", "0": "none", "mild": "mild", "slight": "mild"}.get(low)
        if low in ("moderate", "severe", "moderate-severe", "moderate to severe", "tense", "refractory"):
            value = "moderate-severe"
    elif name == "encephalopathy":
        value = {"none": "none", "absent": "none", "no": "none", "0": "none"}.get(low)
        m = re.fullmatch(r"(?:grade\s*)?([1-4])(?:\s*-\s*([1-4]))?", low)
        if m:
            value = "grade 1-2" if int(m.group(2) or m.group(1)) <= 2 else "grade 3-4"
    else:
        value = next((a for a in allowed if a == low), None)
    if value not in allowed:
        raise InputError(f"{bad} expected one of {', '.join(allowed)}, got {text[:40]!r}")
    return value


def read_text(text: str, where: str) -> tuple[ClinicalData, list[str]] | None:
    """Clinical data in free text written as ``name: value`` (one per line or ``;``-separated), e.g. a
    text SR: ``Child-Pugh: B; bilirubin: 2.4 mg/dL; AFP: 350 ng/mL; BCLC: B``. Lines naming no field
    are skipped; None when no line names one."""
    pairs: dict[str, str] = {}
    for part in re.split(r"[;\n]+", text):
        if ":" not in part:
            continue
        key, value = part.split(":", 1)
        name = field_named(key)
        if name is not None:
            pairs[key.strip()] = value.strip().rstrip(".")
    if not pairs:
        return None
    return ClinicalData.from_mapping(pairs, where)


# ---------------------------------------------------------------- contraindications and cautions

# Thresholds as the guidelines state them (check the current versions before relying on them):
# - EASL Clinical Practice Guidelines: Management of hepatocellular carcinoma, J Hepatol 2018;69:182-236
#   (table of contraindications to TACE, after Raoul et al., Cancer Treat Rev 2011;37:212-20): absolute -
#   decompensated cirrhosis (Child-Pugh B >= 8, including jaundice, clinical encephalopathy, refractory
#   ascites), severely reduced portal vein flow (portal vein occlusion), renal insufficiency (creatinine
#   >= 2 mg/dL or creatinine clearance < 30 mL/min); relative - tumour >= 10 cm. Checked against that table as
#   World J Hepatol 2015;7:2009 (Table 1) reprints it.
# - BCLC 2022 update (Reig et al., J Hepatol 2022;76:681-93): portal invasion or extrahepatic spread is
#   stage C (systemic therapy first), ECOG PS > 2 or Child-Pugh C (end-stage liver function) stage D
#   (best supportive care); TACE is the treatment of stage B.
# - Bilirubin: > 3 mg/dL (51 umol/L) contraindicates TACE in the EASL-EORTC 2012 guideline and most trials;
#   > 2 mg/dL is the exclusion of many TACE trials (e.g. Lammer et al., PRECISION V, 2010): a caution.
CONTRAINDICATION, CAUTION = "contraindication", "caution"
BILIRUBIN_CONTRA_MG_DL = 3.0
BILIRUBIN_CAUTION_MG_DL = 2.0
CHILD_PUGH_B_CONTRA_POINTS = 8  # decompensated cirrhosis: an absolute contraindication in the table above
LARGE_TUMOR_CM = 10.0
CREATININE_CONTRA_MG_DL = 2.0  # renal insufficiency: ">= 2 mg/dL" in the table above
CLEARANCE_CONTRA_ML_MIN = 30.0  # "< 30 mL/min"


@dataclass(frozen=True)
class Flag:
    """A guideline contraindication or caution; the plan is still shown (research use)."""

    level: str  # contraindication | caution
    code: str
    text: str
    guideline: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.level.upper()}: {self.text} ({self.guideline})"


def flags(data: ClinicalData) -> list[Flag]:
    """The contraindications and cautions to TACE this patient's data show (module constants)."""
    out: list[Flag] = []
    cls, how = data.child_pugh_class()
    points = data.child_pugh_points()
    if cls == "C":
        out.append(Flag(CONTRAINDICATION, "child_pugh_c", f"Child-Pugh C ({how})", "EASL 2018; BCLC 2022 stage D"))
    elif cls == "B" and points is not None and points >= CHILD_PUGH_B_CONTRA_POINTS:
        text = f"Child-Pugh B{points} (decompensated cirrhosis)"
        out.append(Flag(CONTRAINDICATION, "child_pugh_b8", text, "EASL 2018; Raoul et al. 2011"))
    if data.main_portal_vein_invasion:
        out.append(Flag(CONTRAINDICATION, "main_portal_vein", "tumor invasion of the main portal vein", "EASL 2018"))
    elif data.portal_vein_thrombosis:
        text = "portal vein tumor thrombus (branch not given; main trunk contraindicates TACE)"
        out.append(Flag(CAUTION, "portal_vein_thrombosis", text, "EASL 2018; BCLC 2022 stage C"))
    if data.extrahepatic_spread:
        text = "extrahepatic spread: BCLC C, systemic therapy is first line"
        out.append(Flag(CONTRAINDICATION, "extrahepatic_spread", text, "BCLC 2022"))
    bili = data.bilirubin_mg_dl
    if bili is not None and bili > BILIRUBIN_CONTRA_MG_DL:
        text = f"bilirubin {bili:.3g} mg/dL > {BILIRUBIN_CONTRA_MG_DL:g} mg/dL"
        out.append(Flag(CONTRAINDICATION, "bilirubin", text, "EASL-EORTC 2012"))
    elif bili is not None and bili > BILIRUBIN_CAUTION_MG_DL:
        text = f"bilirubin {bili:.3g} mg/dL > {BILIRUBIN_CAUTION_MG_DL:g} mg/dL"
        out.append(Flag(CAUTION, "bilirubin", text, "TACE trial exclusion"))
    renal = []
    if data.creatinine_mg_dl is not None and data.creatinine_mg_dl >= CREATININE_CONTRA_MG_DL:
        renal.append(f"creatinine {data.creatinine_mg_dl:.3g} mg/dL >= {CREATININE_CONTRA_MG_DL:g} mg/dL")
    clearance = data.creatinine_clearance_ml_min
    if clearance is not None and clearance < CLEARANCE_CONTRA_ML_MIN:
        renal.append(f"creatinine clearance {clearance:.3g} mL/min < {CLEARANCE_CONTRA_ML_MIN:g} mL/min")
    egfr = data.egfr_ml_min  # the clearance criterion, read on the estimate labs report more often
    if egfr is not None and egfr < CLEARANCE_CONTRA_ML_MIN:
        renal.append(f"eGFR {egfr:.3g} mL/min/1.73 m2 < {CLEARANCE_CONTRA_ML_MIN:g}")
    if renal:
        text = "renal insufficiency: " + ", ".join(renal)
        out.append(Flag(CONTRAINDICATION, "renal_insufficiency", text, "EASL 2018; Raoul et al. 2011"))
    if data.ecog is not None and data.ecog > 2:
        out.append(Flag(CONTRAINDICATION, "ecog", f"ECOG performance status {data.ecog}", "BCLC 2022 stage D"))
    if data.bclc == "D" and not any(f.code in ("ecog", "child_pugh_c") for f in out):
        out.append(Flag(CONTRAINDICATION, "bclc_d", "BCLC stage D", "BCLC 2022"))
    if data.largest_tumor_cm is not None and data.largest_tumor_cm >= LARGE_TUMOR_CM:
        text = f"largest tumor {data.largest_tumor_cm:g} cm >= {LARGE_TUMOR_CM:g} cm"
        out.append(Flag(CAUTION, "large_tumor", text, "EASL 2018 (relative)"))
    return out


FIELDS = tuple(f.name for f in fields(ClinicalData))

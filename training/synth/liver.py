"""Synthetic liver TACE cohort: patients, hidden response profiles, and the ground truth.

The ground truth is `outcome(patient, protocol)`: a documented, deterministic function that
a planner can be scored against (F1 against the physician's "gold" protocol as in the MeWM
paper, and regret against the oracle). It works for any protocol over the action base.

Response model (per patient, hidden):
- Drug kill: each drug kills `POTENCY[drug] * sensitivity[class]` of the viable tumor;
  drugs of one class do not add up (the strongest counts once) but add toxicity; drugs
  of different classes combine as independent hits. Lipiodol emulsion raises drug kill by
  30% (better delivery).
- Embolic kill: `EMBOLIC_BASE + EMBOLIC_VASC * vascularity`; absolute alcohol ablates
  regardless of vascularity; LC Beads elute an anthracycline when one is in the protocol.
  Embolics combine as independent hits.
- viable fraction = (1 - drug kill) * (1 - embolic kill), at least 2%. Of the killed tumor,
  a Lipiodol share (with Lipiodol in the protocol, scaled by vascularity) stays as dense
  deposits, the rest is necrosis; necrotic tissue shrinks the lesion.
- Toxicity: 0.15 per drug, 0.8 per clinical conflict (two platinum drugs, two
  anthracyclines, PVA with absolute alcohol or gelatin sponge), 0.3 for absolute alcohol,
  times 1.5 for Child-Pugh B and 2 for C.
Survival: Weibull proportional hazards with linear predictor
  0.55 ln(1 + residual viable cm3) + 0.25 ln(1 + baseline tumor cm3) + 0.5 [CPS B]
  + 1.0 [CPS C] + 0.15 log10(1 + AFP) + 0.6 [vascular invasion] + 0.9 toxicity,
shape 1.2, scale set so the cohort's median OS is near the real cohort's 104 weeks; about
12-20% of cases are censored by end of follow-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oncoplan.planner.prior import PRACTICE
from oncoplan.tace.actions import DRUG_CLASS, DRUG_CLASSES, Protocol, conflicts, protocol_space

POTENCY = {
    "Raltitrexed": 0.30,
    "Epirubicin": 0.38,
    "Oxaliplatin": 0.36,
    "Lobaplatin": 0.34,
    "Mitomycin": 0.32,
    "Idarubicin": 0.42,
    "Nedaplatin": 0.30,
    "Pirarubicin": 0.40,
    "Cisplatin": 0.38,
    "Hydroxycamptothecin": 0.28,
    "Doxorubicin": 0.40,
}
EMBOLIC_BASE = {
    "Lipiodol": 0.20,
    "Gelatin Sponge": 0.15,
    "PVA": 0.22,
    "Absolute Alcohol": 0.45,
    "NBCA": 0.25,
    "KMG": 0.18,
    "LC Beads": 0.22,
}
EMBOLIC_VASC = {
    "Lipiodol": 0.35,
    "Gelatin Sponge": 0.25,
    "PVA": 0.30,
    "Absolute Alcohol": 0.0,
    "NBCA": 0.20,
    "KMG": 0.25,
    "LC Beads": 0.30,
}
LIPIODOL_BOOST = 1.3
WEIBULL_SHAPE = 1.2
WEIBULL_SCALE_WEEKS = 2600.0  # calibrated: median OS of generated cohorts ~ 100-110 weeks
SENSITIVITY_BETA = (2.0, 2.0)  # hidden drug-class sensitivity ~ Beta(a, b) per class
VASCULARITY_BETA = (2.5, 2.0)  # hidden tumor vascularity ~ Beta(a, b)
BETA = {"viable": 0.55, "burden": 0.25, "cps_b": 0.5, "cps_c": 1.0, "afp": 0.15, "vi": 0.6, "tox": 0.9}


@dataclass(frozen=True)
class ResponseProfile:
    """Hidden per-patient biology: drug-class sensitivities and tumor vascularity, all in [0, 1]."""

    sensitivity: dict[str, float]
    vascularity: float


@dataclass(frozen=True)
class Lesion:
    centre: tuple[float, float, float]  # anatomy mm
    radii: tuple[float, float, float]
    wobble_seed: int

    @property
    def volume_cm3(self) -> float:
        return 4.0 / 3.0 * math.pi * float(np.prod(self.radii)) / 1000.0


@dataclass(frozen=True)
class LiverPatient:
    """Clinical covariates (TCIA names in cohort.csv), lesions and the hidden response profile."""

    case_id: str
    age: int
    sex: int  # TCIA coding: 1 male, 2 female
    cps: str  # Child-Pugh A/B/C
    afp: float  # ng/mL
    vascular_invasion: int
    lesions: tuple[Lesion, ...]
    profile: ResponseProfile = field(repr=False)
    tr_size_cm: float | None = None  # as reported (often missing)

    @property
    def burden_cm3(self) -> float:
        return sum(lesion.volume_cm3 for lesion in self.lesions)


@dataclass(frozen=True)
class Outcome:
    """Ground truth of one protocol for one patient."""

    viable_fraction: float
    lipiodol_fraction: float
    necrosis_fraction: float
    shrink: float  # post/pre lesion volume ratio
    toxicity: float
    linear_predictor: float
    median_os_weeks: float
    expected_os_weeks: float


def _drug_kill(protocol: Protocol, profile: ResponseProfile) -> float:
    best_per_class: dict[str, float] = {}
    for drug in protocol.drugs:
        cls = DRUG_CLASS[drug]
        kill = POTENCY[drug] * profile.sensitivity[cls]
        best_per_class[cls] = max(best_per_class.get(cls, 0.0), kill)
    boost = LIPIODOL_BOOST if "Lipiodol" in protocol.embolics else 1.0
    survive = 1.0
    for kill in best_per_class.values():
        survive *= 1.0 - min(kill * boost, 0.95)
    return 1.0 - survive


def _embolic_kill(protocol: Protocol, profile: ResponseProfile) -> float:
    survive = 1.0
    has_anthracycline = any(DRUG_CLASS[d] == "anthracycline" for d in protocol.drugs)
    for emb in protocol.embolics:
        kill = EMBOLIC_BASE[emb] + EMBOLIC_VASC[emb] * profile.vascularity
        if emb == "LC Beads" and has_anthracycline:
            kill += 0.12  # drug-eluting beads
        survive *= 1.0 - min(kill, 0.9)
    return 1.0 - survive


def toxicity(protocol: Protocol, cps: str) -> float:
    tox = 0.15 * len(protocol.drugs) + 0.8 * len(conflicts(protocol.items))
    tox += 0.3 if "Absolute Alcohol" in protocol.embolics else 0.0
    return tox * {"A": 1.0, "B": 1.5, "C": 2.0}[cps]


def outcome(patient: LiverPatient, protocol: Protocol) -> Outcome:
    """The ground-truth response and survival of `patient` under `protocol` (see module doc)."""
    if not protocol.items:
        raise ValueError("a protocol needs at least one drug or embolic")
    drug = _drug_kill(protocol, patient.profile)
    emb = _embolic_kill(protocol, patient.profile)
    viable = max((1.0 - drug) * (1.0 - emb), 0.02)
    killed = 1.0 - viable
    lipiodol = killed * (0.25 + 0.45 * patient.profile.vascularity) if "Lipiodol" in protocol.embolics else 0.0
    necrosis = killed - lipiodol
    shrink = 1.0 - 0.45 * necrosis
    tox = toxicity(protocol, patient.cps)
    residual_cm3 = patient.burden_cm3 * viable  # viable tissue does not shrink; necrosis does
    lp = (
        BETA["viable"] * math.log1p(residual_cm3)
        + BETA["burden"] * math.log1p(patient.burden_cm3)
        + BETA["cps_b"] * (patient.cps == "B")
        + BETA["cps_c"] * (patient.cps == "C")
        + BETA["afp"] * math.log10(1.0 + patient.afp)
        + BETA["vi"] * patient.vascular_invasion
        + BETA["tox"] * tox
    )
    scale = WEIBULL_SCALE_WEEKS * math.exp(-lp / WEIBULL_SHAPE)
    return Outcome(
        viable_fraction=viable,
        lipiodol_fraction=lipiodol,
        necrosis_fraction=necrosis,
        shrink=shrink,
        toxicity=tox,
        linear_predictor=lp,
        median_os_weeks=scale * math.log(2.0) ** (1.0 / WEIBULL_SHAPE),
        expected_os_weeks=scale * math.gamma(1.0 + 1.0 / WEIBULL_SHAPE),
    )


def oracle_protocol(patient: LiverPatient, space: list[Protocol] | None = None) -> Protocol:
    """The protocol with the best expected survival under the ground truth."""
    space = space if space is not None else protocol_space()
    return min(space, key=lambda p: outcome(patient, p).linear_predictor)


def population_protocol(
    patient: LiverPatient, space: list[Protocol] | None = None, draws: int = 300, seed: int = 0
) -> Protocol:
    """The best protocol for what can be known of `patient` without its hidden response profile: the
    lowest ground-truth linear predictor averaged over profiles drawn from the cohort's prior (its
    Child-Pugh, burden and other covariates kept). The bound of any planner that cannot see the
    profile, which nothing in these synthetic images shows."""
    import dataclasses

    space = space if space is not None else protocol_space()
    rng = np.random.default_rng(seed)
    profiles = [
        ResponseProfile(
            {cls: float(rng.beta(*SENSITIVITY_BETA)) for cls in DRUG_CLASSES}, float(rng.beta(*VASCULARITY_BETA))
        )
        for _ in range(draws)
    ]
    patients = [dataclasses.replace(patient, profile=profile) for profile in profiles]
    return min(space, key=lambda p: float(np.mean([outcome(q, p).linear_predictor for q in patients])))


def regret_weeks(patient: LiverPatient, chosen: Protocol, space: list[Protocol] | None = None) -> float:
    """Expected OS lost by choosing `chosen` instead of the oracle (>= 0)."""
    best = outcome(patient, oracle_protocol(patient, space)).expected_os_weeks
    return best - outcome(patient, chosen).expected_os_weeks


def patient_from_record(truth: dict, row: dict) -> LiverPatient:
    """The ground-truth patient of a written case, from its truth.json and its cohort.csv row.

    Evaluation uses it to score any protocol with `outcome` (the hidden profile is in truth.json).
    """
    profile = ResponseProfile(dict(truth["profile"]["sensitivity"]), float(truth["profile"]["vascularity"]))
    lesions = tuple(
        Lesion(tuple(les["centre"]), tuple(les["radii"]), int(les["wobble_seed"])) for les in truth["lesions"]
    )
    size = str(row.get("Tr_Size", "") or "")
    return LiverPatient(
        case_id=str(truth["case_id"]),
        age=int(row["age"]),
        sex=int(row["Sex"]),
        cps=str(row["CPS"]),
        afp=float(row["AFP"]),
        vascular_invasion=int(row["Vascular invasion"]),
        lesions=lesions,
        profile=profile,
        tr_size_cm=float(size) if size and size.lower() != "nan" else None,
    )


def sample_patient(
    case_id: str, rng: np.random.Generator, liver_centre: np.ndarray, liver_radii: np.ndarray
) -> LiverPatient:
    """Covariates drawn like the HCC-TACE-Seg table; lesions placed inside the liver ellipsoid."""
    multinodular = rng.random() < 0.5
    n = int(rng.integers(2, 4)) if multinodular else 1
    size_cm = float(np.clip(rng.lognormal(math.log(4.6), 0.6), 1.5, 14.0))
    lesions = []
    for i in range(n):
        d_cm = size_cm if i == 0 else float(np.clip(size_cm * rng.uniform(0.25, 0.6), 1.0, 6.0))
        r = d_cm * 10.0 / 2.0
        radii = tuple(float(r * s) for s in rng.uniform(0.85, 1.15, 3))
        for _ in range(200):  # rejection-sample a centre well inside the liver
            u = rng.uniform(-1, 1, 3)
            if np.sum(u * u) > 1:
                continue
            c = liver_centre + u * np.maximum(liver_radii * 0.75 - r, 0.0)
            break
        lesions.append(Lesion(tuple(float(v) for v in c), radii, int(rng.integers(1 << 30))))
    sens = {cls: float(rng.beta(*SENSITIVITY_BETA)) for cls in DRUG_CLASSES}
    cps = str(rng.choice(["A", "B", "C"], p=[0.82, 0.17, 0.01]))
    return LiverPatient(
        case_id=case_id,
        age=int(np.clip(rng.normal(67.5, 11.3), 31, 93)),
        sex=1 if rng.random() < 0.65 else 2,
        cps=cps,
        afp=float(min(10 ** rng.normal(1.9, 1.3), 1e7)),  # within the clinical schema's range (4 in 100,000 were not)
        vascular_invasion=int(rng.random() < 0.22),
        lesions=tuple(lesions),
        profile=ResponseProfile(sens, float(rng.beta(*VASCULARITY_BETA))),
        tr_size_cm=round(size_cm, 1) if rng.random() < 0.5 else None,
    )


def gold_protocol(patient: LiverPatient, site: str, rng: np.random.Generator) -> Protocol:
    """The physician's choice: drawn from site practice; a third of the time the better of two options."""
    options = list(PRACTICE[site])
    weights = np.asarray(list(PRACTICE[site].values()))
    first = Protocol.parse(options[rng.choice(len(options), p=weights / weights.sum())])
    if rng.random() < 1 / 3:
        second = Protocol.parse(options[rng.choice(len(options), p=weights / weights.sum())])
        return min((first, second), key=lambda p: outcome(patient, p).linear_predictor)
    return first


def random_protocol(rng: np.random.Generator, max_drugs: int = 2, max_embolics: int = 2) -> Protocol:
    """A conflict-free protocol drawn uniformly from the action base (a randomised-trial arm).

    Training cohorts for the world models use these: practice protocols cover a handful of
    regimens, so a model trained on them alone cannot learn how the rest of the action base acts.
    """
    space = [p for p in protocol_space(max_drugs=max_drugs, max_embolics=max_embolics) if not conflicts(p.items)]
    return space[int(rng.integers(len(space)))]


def sample_survival(out: Outcome, rng: np.random.Generator) -> tuple[float, int]:
    """Observed OS (weeks) and event flag (1 death, 0 alive or lost to follow-up)."""
    scale = out.median_os_weeks / math.log(2.0) ** (1.0 / WEIBULL_SHAPE)
    t = scale * (-math.log(1.0 - rng.random())) ** (1.0 / WEIBULL_SHAPE)
    follow_up = rng.uniform(280.0, 900.0)
    if rng.random() < 0.05:  # lost to follow-up early
        follow_up = rng.uniform(5.0, 150.0)
    return (t, 1) if t <= follow_up else (follow_up, 0)

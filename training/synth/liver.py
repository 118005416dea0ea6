"""Synthetic liver TACE cohort: patients, hidden response profiles, and the ground truth.

The ground truth is `outcome(patient, protocol)`: a documented, deterministic function that
a planner can be scored against (F1 against the physician's "gold" protocol as in the MeWM
paper, and regret against the oracle). It works for any protocol over the action base. Each cohort
records its generator (``cohort.json``, ``truth.json``); a case is scored under its own generator's
:class:`GroundTruth` (:data:`GROUND_TRUTHS`), so cohorts of either version stay valid.

Response model (per patient, hidden; the parameters are the generator's :class:`GroundTruth`):
- Drug kill: each drug kills `POTENCY[drug] * sensitivity[class]` of the viable tumor;
  drugs of one class do not add up (the strongest counts once) but add toxicity; drugs
  of different classes combine as independent hits. Lipiodol emulsion raises drug kill by
  30% (better delivery).
- Embolic kill: `embolic_base + embolic_vasc * vascularity`; absolute alcohol ablates regardless of
  vascularity; LC Beads elute an anthracycline when one is in the protocol, killing `bead_elution` more
  (liver-2: times the anthracycline sensitivity). In liver-2, Lipiodol and LC Beads depend mostly on
  vascularity (a hypovascular tumour takes up little Lipiodol and few beads). Embolics combine as
  independent hits.
- viable fraction = (1 - drug kill) * (1 - embolic kill), at least 2%. Of the killed tumor,
  a Lipiodol share (with Lipiodol in the protocol, scaled by vascularity) stays as dense
  deposits, the rest is necrosis; necrotic tissue shrinks the lesion.
- Toxicity: 0.15 per drug, `embolic_tox` per embolic (liver-2: 0.15, ischaemic injury to the liver
  around the tumour; liver-1: 0), 0.8 per clinical conflict (two platinum drugs, two anthracyclines, PVA
  with absolute alcohol or gelatin sponge), 0.3 for absolute alcohol, times 1.5 for Child-Pugh B and 2
  for C. In liver-2 an embolic is worth its injury only in a tumour vascular enough to take it up: the
  visible vascularity decides it.
Survival: Weibull proportional hazards with linear predictor
  0.55 ln(1 + residual viable cm3) + 0.25 ln(1 + baseline tumor cm3) + 0.5 [CPS B]
  + 1.0 [CPS C] + 0.15 log10(1 + AFP) + 0.6 [vascular invasion] + 0.9 toxicity,
shape 1.2, scale set so the cohort's median OS is near the real cohort's 104 weeks; about
12-20% of cases are censored by end of follow-up.

liver-3 (issue 34's second version) makes what the images show decide the best protocol: Lipiodol and LC
Beads kill only as far as the tumour takes them up (0.75 and 0.65 x vascularity, nothing vascularity-free),
an embolic costs 0.4 toxicity, beads elute 0.4 x the anthracycline sensitivity, the profile follows U-shaped
priors (Beta(0.6, 0.6) sensitivities, Beta(0.8, 0.8) vascularity: hypo- and hypervascular tumours,
responders and non-responders), and the images show it with less noise (SD 0.08 and 0.10).

What the pre-treatment images show (``liver-2``, ``liver-3``; ``liver-1`` images show nothing of the profile): a
noisy copy of part of the hidden profile, :class:`VisibleBiology`, drawn once per patient, ``visible = hidden +
N(0, GroundTruth.visible_noise)``. The writer renders it (``write_liver``): vascularity as the viable tumour's arterial
enhancement and portal-venous washout, the anthracycline sensitivity as the amplitude of its texture. A
perfect reader of the images knows the visible copy and nothing more: :func:`image_informed_protocol` is
its ceiling (the best protocol averaged over the hidden profiles consistent with what the images and
covariates show), between the population oracle (covariates only) and the full oracle.

Physicians (:func:`physician_protocol`; liver-2) choose from real practice conditioned on the patient's covariates
(``practice.py``: the HCC-TACE-Seg table's protocol mix fitted on Child-Pugh, nodularity, vascular
invasion, AFP and age), and a third of the time take the better of two options as judged from what they
can see (covariates and images), not from the hidden truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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
EMBOLIC_BASE_V1 = {
    "Lipiodol": 0.20,
    "Gelatin Sponge": 0.15,
    "PVA": 0.22,
    "Absolute Alcohol": 0.45,
    "NBCA": 0.25,
    "KMG": 0.18,
    "LC Beads": 0.22,
}
EMBOLIC_VASC_V1 = {
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
# liver-3's scale: the Kaplan-Meier median OS of 400 practice-treated cases per site is 116 weeks internal and
# 98 external (liver-2 at 3300: 117 and 116; the real cohort: 104).
WEIBULL_SCALE_LIVER3 = 4300.0
# What the pre-treatment images of liver-2 show of the hidden profile: its standard deviation of noise per
# visible quantity (prior SDs: vascularity 0.26, a sensitivity 0.26), so a perfect reader recovers about
# 82% of the variance of vascularity and 75% of that of the anthracycline sensitivity; the other four
# sensitivities stay hidden. A generator may set its own (`GroundTruth.visible_noise`).
VISIBLE_NOISE = {"vascularity": 0.12, "anthracycline": 0.15}
VISIBLE_CLASSES = ("anthracycline",)


@dataclass(frozen=True)
class GroundTruth:
    """The parameters of one generator's response model (module docstring); a cohort records its generator."""

    embolic_base: dict[str, float]
    embolic_vasc: dict[str, float]
    bead_elution: float  # added embolic kill of LC Beads with an anthracycline in the protocol
    bead_elution_by_sensitivity: bool  # liver-2: times the anthracycline sensitivity
    embolic_tox: float  # toxicity per embolic
    sensitivity_beta: tuple[float, float]  # hidden drug-class sensitivity ~ Beta(a, b) per class
    vascularity_beta: tuple[float, float]  # hidden tumour vascularity ~ Beta(a, b)
    weibull_scale_weeks: float  # calibrated: median OS of generated cohorts ~ 100-110 weeks
    images_show_biology: bool  # liver-2: the pre-treatment images show `VisibleBiology`
    physicians: str  # "site table" (liver-1) or "real practice" (liver-2, practice.py)
    # SD of the noise on each visible quantity (images_show_biology only)
    visible_noise: dict[str, float] = field(default_factory=lambda: dict(VISIBLE_NOISE))


GROUND_TRUTHS = {
    # Until 2026-12-07: the images show nothing of the profile; embolics cost nothing and depend little on
    # vascularity, so had the images shown it, it would rarely have changed the best protocol.
    "liver-1": GroundTruth(
        EMBOLIC_BASE_V1, EMBOLIC_VASC_V1, 0.12, False, 0.0, (2.0, 2.0), (2.5, 2.0), 2600.0, False, "site table"
    ),
    # Issue 34: part of the profile in the images; a hypovascular tumour takes up little Lipiodol and few
    # beads, an embolic injures the liver around the tumour, beads elute doxorubicin into a tumour only as
    # far as it is sensitive to it; wider spread of the profile.
    "liver-2": GroundTruth(
        EMBOLIC_BASE_V1 | {"Lipiodol": 0.05, "LC Beads": 0.08},
        EMBOLIC_VASC_V1 | {"Lipiodol": 0.55, "LC Beads": 0.45},
        0.24,
        True,
        0.15,
        (1.3, 1.3),
        (1.5, 1.2),
        3300.0,
        True,
        "real practice",
    ),
    # Issue 34, second version: on liver-2 what the images show rarely changed the best protocol (a perfect
    # reader gained 0.7 months over the covariates alone on the internal action set). Here it decides, as
    # in clinical TACE: Lipiodol and beads work only as far as the tumour takes them up (no kill in a
    # hypovascular tumour), each embolic costs the liver enough (0.4) that a hypovascular tumour is better
    # without a second one, beads elute more doxorubicin (0.4 x the anthracycline sensitivity), the
    # profile is spread to both ends (U-shaped priors: hypo- and hypervascular tumours, responders and
    # non-responders), and the images show it more sharply (noise SD 0.08 and 0.10).
    "liver-3": GroundTruth(
        EMBOLIC_BASE_V1 | {"Lipiodol": 0.0, "LC Beads": 0.0},
        EMBOLIC_VASC_V1 | {"Lipiodol": 0.75, "LC Beads": 0.65},
        0.40,
        True,
        0.40,
        (0.6, 0.6),
        (0.8, 0.8),
        WEIBULL_SCALE_LIVER3,
        True,
        "real practice",
        {"vascularity": 0.08, "anthracycline": 0.10},
    ),
}
# The generator `oncoplan synth liver` runs unless told otherwise. The shipped TACE bundles are trained on
# liver-1 cohorts (their dynamics model ranks liver-2 protocols at Spearman 0.45 against 0.75 on liver-1):
# the default moves to liver-2 when they are retrained on it (issue 34).
DEFAULT_GENERATOR = "liver-1"
GENERATORS = tuple(GROUND_TRUTHS)
BETA = {"viable": 0.55, "burden": 0.25, "cps_b": 0.5, "cps_c": 1.0, "afp": 0.15, "vi": 0.6, "tox": 0.9}


@dataclass(frozen=True)
class ResponseProfile:
    """Hidden per-patient biology: drug-class sensitivities and tumor vascularity, all in [0, 1]."""

    sensitivity: dict[str, float]
    vascularity: float


@dataclass(frozen=True)
class VisibleBiology:
    """What the pre-treatment images show of the hidden profile: noisy copies of the vascularity and of the
    sensitivities of `VISIBLE_CLASSES` (not clipped: the renderer maps them monotonically to HU)."""

    vascularity: float
    sensitivity: dict[str, float]

    def __post_init__(self) -> None:
        if set(self.sensitivity) != set(VISIBLE_CLASSES):
            raise ValueError(f"visible sensitivities must be {VISIBLE_CLASSES}, got {sorted(self.sensitivity)}")


def sample_visible(
    profile: ResponseProfile, rng: np.random.Generator, noise: dict[str, float] = VISIBLE_NOISE
) -> VisibleBiology:
    """The noisy copy of `profile` that the images show (`noise`: its generator's `visible_noise`)."""
    return VisibleBiology(
        vascularity=profile.vascularity + float(rng.normal(0.0, noise["vascularity"])),
        sensitivity={cls: profile.sensitivity[cls] + float(rng.normal(0.0, noise[cls])) for cls in VISIBLE_CLASSES},
    )


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
    visible: VisibleBiology | None = field(default=None, repr=False)  # None: images show nothing (liver-1)
    generator: str = DEFAULT_GENERATOR

    @property
    def truth(self) -> GroundTruth:
        return GROUND_TRUTHS[self.generator]

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


def _embolic_kill(protocol: Protocol, profile: ResponseProfile, truth: GroundTruth) -> float:
    survive = 1.0
    has_anthracycline = any(DRUG_CLASS[d] == "anthracycline" for d in protocol.drugs)
    for emb in protocol.embolics:
        kill = truth.embolic_base[emb] + truth.embolic_vasc[emb] * profile.vascularity
        if emb == "LC Beads" and has_anthracycline:  # drug-eluting beads
            elution = profile.sensitivity["anthracycline"] if truth.bead_elution_by_sensitivity else 1.0
            kill += truth.bead_elution * elution
        survive *= 1.0 - min(kill, 0.9)
    return 1.0 - survive


def toxicity(protocol: Protocol, cps: str, truth: GroundTruth = GROUND_TRUTHS["liver-1"]) -> float:
    tox = 0.15 * len(protocol.drugs) + truth.embolic_tox * len(protocol.embolics) + 0.8 * len(conflicts(protocol.items))
    tox += 0.3 if "Absolute Alcohol" in protocol.embolics else 0.0
    return tox * {"A": 1.0, "B": 1.5, "C": 2.0}[cps]


def outcome(patient: LiverPatient, protocol: Protocol) -> Outcome:
    """The ground-truth response and survival of `patient` under `protocol` (see module doc)."""
    if not protocol.items:
        raise ValueError("a protocol needs at least one drug or embolic")
    drug = _drug_kill(protocol, patient.profile)
    truth = patient.truth
    emb = _embolic_kill(protocol, patient.profile, truth)
    viable = max((1.0 - drug) * (1.0 - emb), 0.02)
    killed = 1.0 - viable
    lipiodol = killed * (0.25 + 0.45 * patient.profile.vascularity) if "Lipiodol" in protocol.embolics else 0.0
    necrosis = killed - lipiodol
    shrink = 1.0 - 0.45 * necrosis
    tox = toxicity(protocol, patient.cps, truth)
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
    scale = truth.weibull_scale_weeks * math.exp(-lp / WEIBULL_SHAPE)
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


def _prior_profile(truth: GroundTruth, rng: np.random.Generator) -> ResponseProfile:
    return ResponseProfile(
        {cls: float(rng.beta(*truth.sensitivity_beta)) for cls in DRUG_CLASSES},
        float(rng.beta(*truth.vascularity_beta)),
    )


_GRID = np.linspace(0.0005, 0.9995, 1000)


def _posterior_draws(prior: tuple[float, float], seen: float, noise: float, draws: int, rng: np.random.Generator):
    """`draws` values of a Beta(`prior`) quantity given its noisy copy `seen` (noise SD `noise`): inverse-CDF
    sampling on a fine grid, exact to the grid's 0.001."""
    from scipy.stats import beta as beta_dist

    density = beta_dist.pdf(_GRID, *prior) * np.exp(-0.5 * ((seen - _GRID) / noise) ** 2)
    cdf = np.cumsum(density)
    return np.interp(rng.random(draws) * cdf[-1], cdf, _GRID)


def posterior_profiles(patient: LiverPatient, draws: int, rng: np.random.Generator) -> list[ResponseProfile]:
    """Hidden profiles consistent with what can be known of `patient`: its visible biology where its images
    show some (the visible quantities from their posterior, the rest from the prior), else the prior."""
    truth = patient.truth
    profiles = [_prior_profile(truth, rng) for _ in range(draws)]
    seen = patient.visible
    if seen is None:
        return profiles
    vascularity = _posterior_draws(
        truth.vascularity_beta, seen.vascularity, truth.visible_noise["vascularity"], draws, rng
    )
    classes = {
        cls: _posterior_draws(truth.sensitivity_beta, value, truth.visible_noise[cls], draws, rng)
        for cls, value in seen.sensitivity.items()
    }
    return [
        ResponseProfile(
            {**p.sensitivity, **{cls: float(values[i]) for cls, values in classes.items()}}, float(vascularity[i])
        )
        for i, p in enumerate(profiles)
    ]


def _best_on_average(patient: LiverPatient, space: list[Protocol], profiles: list[ResponseProfile]) -> Protocol:
    import dataclasses

    patients = [dataclasses.replace(patient, profile=profile) for profile in profiles]
    return min(space, key=lambda p: float(np.mean([outcome(q, p).linear_predictor for q in patients])))


def population_protocol(
    patient: LiverPatient, space: list[Protocol] | None = None, draws: int = 300, seed: int = 0
) -> Protocol:
    """The best protocol for what can be known of `patient` without its hidden response profile: the
    lowest ground-truth linear predictor averaged over profiles drawn from the cohort's prior (its
    Child-Pugh, burden and other covariates kept). The bound of any planner that reads only the covariates
    and the tumour's size, not what its images show of the profile."""
    space = space if space is not None else protocol_space()
    rng = np.random.default_rng(seed)
    return _best_on_average(patient, space, [_prior_profile(patient.truth, rng) for _ in range(draws)])


def image_informed_protocol(
    patient: LiverPatient, space: list[Protocol] | None = None, draws: int = 300, seed: int = 0
) -> Protocol:
    """The best protocol for everything `patient`'s covariates and pre-treatment images show: as the
    population oracle, over profiles drawn from the posterior given its visible biology. The ceiling of a
    perfect reader of the images; equal to the population oracle where the images show nothing (liver-1)."""
    space = space if space is not None else protocol_space()
    return _best_on_average(patient, space, posterior_profiles(patient, draws, np.random.default_rng(seed)))


def regret_weeks(patient: LiverPatient, chosen: Protocol, space: list[Protocol] | None = None) -> float:
    """Expected OS lost by choosing `chosen` instead of the oracle (>= 0)."""
    best = outcome(patient, oracle_protocol(patient, space)).expected_os_weeks
    return best - outcome(patient, chosen).expected_os_weeks


def patient_from_record(truth: dict, row: dict) -> LiverPatient:
    """The ground-truth patient of a written case, from its truth.json and its cohort.csv row.

    Evaluation uses it to score any protocol with `outcome` (the hidden profile is in truth.json).
    Its generator (truth.json ``generator``; cases written before it was recorded are liver-1) picks the
    ground truth it is scored under; an unknown one is refused.
    """
    generator = str(truth.get("generator", "liver-1"))
    if generator not in GROUND_TRUTHS:
        from oncoplan.errors import InputError

        raise InputError(f"case {truth.get('case_id', '?')}: unknown generator {generator!r} in truth.json")
    profile = ResponseProfile(dict(truth["profile"]["sensitivity"]), float(truth["profile"]["vascularity"]))
    seen = truth.get("visible")  # absent in liver-1 cohorts: their images show nothing of the profile
    visible = VisibleBiology(float(seen["vascularity"]), dict(seen["sensitivity"])) if seen else None
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
        visible=visible,
        generator=generator,
    )


def sample_patient(
    case_id: str,
    rng: np.random.Generator,
    liver_centre: np.ndarray,
    liver_radii: np.ndarray,
    generator: str = DEFAULT_GENERATOR,
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
    truth = GROUND_TRUTHS[generator]
    sens = {cls: float(rng.beta(*truth.sensitivity_beta)) for cls in DRUG_CLASSES}
    cps = str(rng.choice(["A", "B", "C"], p=[0.82, 0.17, 0.01]))
    return LiverPatient(
        case_id=case_id,
        age=int(np.clip(rng.normal(67.5, 11.3), 31, 93)),
        sex=1 if rng.random() < 0.65 else 2,
        cps=cps,
        afp=float(min(10 ** rng.normal(1.9, 1.3), 1e7)),  # within the clinical schema's range (4 in 100,000 were not)
        vascular_invasion=int(rng.random() < 0.22),
        lesions=tuple(lesions),
        profile=ResponseProfile(sens, float(rng.beta(*truth.vascularity_beta))),
        tr_size_cm=round(size_cm, 1) if rng.random() < 0.5 else None,
        generator=generator,
    )


def physician_protocol(patient: LiverPatient, site: str, rng: np.random.Generator) -> Protocol:
    """The physician's choice ("gold"). liver-2: drawn from the site's practice given the patient's covariates
    (:mod:`oncoplan.training.synth.practice`); a third of the time the better of two draws, judged on what
    the physician can know (covariates and images: the image-informed expectation), not on the hidden truth.
    liver-1: drawn from the site's practice table regardless of the patient, a third of the time the better
    of two by the hidden truth."""
    if patient.truth.physicians == "site table":
        from oncoplan.planner.prior import PRACTICE

        options = {str(Protocol.parse(k)): v for k, v in PRACTICE[site].items()}
    else:
        from oncoplan.training.synth.practice import site_practice

        options = site_practice(site, patient)
    names = list(options)
    weights = np.asarray([options[n] for n in names])
    weights = weights / weights.sum()
    first = Protocol.parse(names[rng.choice(len(names), p=weights)])
    if rng.random() < 1 / 3:
        second = Protocol.parse(names[rng.choice(len(names), p=weights)])
        if patient.truth.physicians == "site table":
            return min((first, second), key=lambda p: outcome(patient, p).linear_predictor)
        return _best_on_average(patient, [first, second], posterior_profiles(patient, 64, rng))
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

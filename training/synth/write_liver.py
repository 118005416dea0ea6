"""One synthetic liver TACE case on disk, laid out like HCC-TACE-Seg.

Two studies (pre- and post-TACE), each with non-contrast, arterial (AP) and portal-venous
(PVP) series under the real, messy SeriesDescriptions (sometimes a phase is missing);
the post study is misregistered (rigid shift <= 10 mm, rotation <= 5 degrees, smooth
deformation <= 3 mm) and shows Lipiodol, necrosis, residual viable tumor and shrinkage
from the physician's protocol. Ground truth per study: NIfTI label map on the CT grid and a
DICOM-SEG referencing the PVP (else AP, else non-contrast) series. The case's clinical data, in the
TACE app's schema (`oncoplan.tace.patient`), as `dicom/pre/clinical.json`: the values of its cohort.csv row.

In liver-2 cohorts the viable tumour shows the patient's visible biology (`liver.VisibleBiology`) in both
studies (:func:`tumour_look`): its vascularity as arterial enhancement and portal-venous washout
(:data:`ENHANCEMENT_HU`), its anthracycline sensitivity as the amplitude of its texture (:data:`TEXTURE_HU`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes

from oncoplan.tace.actions import Protocol
from oncoplan.tace.patient import SEXES, TCIA_COLUMNS
from oncoplan.training.synth import liver as L
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets, stable_uid, write_datasets
from oncoplan.training.synth.labels import ANATOMY, MORPH, SegmentSpec, save_label_map, write_seg
from oncoplan.training.synth.scan import sample_grid
from oncoplan.training.synth.shapes import Region, Shape, finish_ct, rasterise, rotation, smooth_field

NON_CONTRAST = ("PRE LIVER", "Recon 2: PRE LIVER", "Recon 2: PRE LIVER", "PRE", "Recon 2: PRE", "PRE CONTRAST", "")
CONTRAST_PAIRS = (  # (AP, PVP) descriptions seen in series_index.csv
    ("Recon 2: LIVER 3 PHASE (AP)", "Recon 3: LIVER 3 PHASE (AP)"),
    ("Recon 2: LIVER 2 PHASE (C/A/P)", "Recon 3: LIVER 2 PHASE (C/A/P)"),
    ("Recon 2: LIVER 2PHASE CAP", "Recon 3: LIVER 2PHASE CAP"),
    ("Recon 2: LIVER 3 PHASE (C/A/P)", "Recon 3: LIVER 3 PHASE (C/A/P)"),
    ("Recon 2: 3 PHASE LIVER (ABD)", "Recon 3: 3 PHASE LIVER (ABD)"),
    ("LIVER 3 PHASE (AP)", "C-A-P"),
    ("Recon 2: LIVER  2PHASE WITH CON", "Recon 3: LIVER  2PHASE WITH CON"),
    ("ARTERIAL", "VENOUS"),
    ("2.5 SOFT", "2.5 STANDARD"),
    ("", ""),
)
# HU by tissue and phase (non-contrast, arterial, portal-venous): HCC enhances in the
# arterial phase and washes out in the portal-venous phase.
TISSUE_HU = {
    "muscle": (50, 55, 60),
    "liver": (58, 75, 115),
    "spleen": (48, 130, 120),
    "kidney": (32, 190, 165),
    "aorta": (42, 280, 160),
    "spine": (420, 420, 420),
    "viable": (42, 125, 80),
    "necrosis": (20, 22, 24),
}
# Visible biology (liver-2), per unit of visible vascularity above the prior mean: HU added to the viable
# tumour in the NC, AP and PVP phases (a hypervascular tumour enhances more and washes out more; at the
# prior's extremes, 0 and 1, the arterial phase runs 86-156 HU against the liver's 75, the portal-venous
# 91-71 against 115: the tumour keeps its contrast in both).
ENHANCEMENT_HU = (0.0, 70.0, -20.0)
_A, _B = L.GROUND_TRUTHS["liver-2"].vascularity_beta
MEAN_VASCULARITY = _A / (_A + _B)  # the liver-2 prior's mean; liver-3 renders with the same map (an HU offset)
# Amplitude (HU) of the viable tumour's texture: TEXTURE_HU * exp(TEXTURE_SLOPE * (s - 0.5)) for a visible
# anthracycline sensitivity s (2.7 HU at 0, 24 HU at 1; every other tissue and liver-1 tumours: 8 HU).
TEXTURE_HU = 8.0
TEXTURE_SLOPE = 2.2
LIPIODOL_HU = 450.0  # dense deposits, +-150 HU of texture: 300-600 HU in every phase
PHASES = ("NC", "AP", "PVP")
BOLUS_DELAY_S = {"NC": None, "AP": 35, "PVP": 70}
SEG_ORDER = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "spine", "viable", "necrosis", "lipiodol")


def abdomen(rng: np.random.Generator) -> tuple[dict[str, Region], float, np.ndarray, np.ndarray]:
    """Organs as analytic regions (anatomy mm): body, liver, spleen, kidneys, aorta, spine."""
    a, b = float(rng.uniform(140, 175)), float(rng.uniform(100, 125))
    body = Shape((0, 0, 0), (a, b, 300), p_xy=2.5, p_z=8, wobble=(0.02, int(rng.integers(1 << 30))))
    inner = body.scaled(-float(rng.uniform(15, 25)))
    liver_c = np.array([-0.35 * a, -0.05 * b, 20.0])
    liver_r = np.array([0.5 * a, 0.68 * b, 85.0]) * rng.uniform(0.9, 1.1, 3)
    w = lambda amp: (amp, int(rng.integers(1 << 30)))  # noqa: E731
    regions = {
        "body": Region([body]),
        "muscle": Region([body.scaled(-float(rng.uniform(6, 12)))], [inner]),
        "liver": Region(
            [
                Shape(tuple(liver_c), tuple(liver_r), wobble=w(0.05)),
                Shape((0.1 * a, -0.4 * b, 35.0), (0.3 * a, 0.28 * b, 45.0), wobble=w(0.05)),  # left lobe
            ]
        ),
        "spleen": Region([Shape((0.62 * a, 0.3 * b, 30.0), (38, 55, 55), wobble=w(0.05))]),
        "kidney_left": Region([Shape((0.36 * a, 0.5 * b, -55.0), (28, 26, 52), wobble=w(0.03))]),
        "kidney_right": Region([Shape((-0.36 * a, 0.5 * b, -65.0), (28, 26, 52), wobble=w(0.03))]),
        "aorta": Region([Shape((0.07 * a, 0.45 * b, 0), (12, 12, 400), p_z=8)]),
        "spine": Region([Shape((0, 0.72 * b, 0), (20, 18, 400), p_z=8)]),
    }
    return regions, 2 * a, liver_c, liver_r


def lesion_shape(lesion: L.Lesion, scale: float = 1.0) -> Shape:
    return Shape(lesion.centre, tuple(r * scale for r in lesion.radii), wobble=(0.06, lesion.wobble_seed))


class Pose:
    """World -> anatomy map of the post-treatment scan: rigid misregistration plus smooth deformation."""

    max_displacement_mm = 45.0

    def __init__(self, rng: np.random.Generator) -> None:
        direction = rng.normal(size=3)
        self.shift = direction / np.linalg.norm(direction) * rng.uniform(3.0, 10.0)
        self.rot = rotation(*rng.uniform(-2.0, 2.0, 2), rng.uniform(-5.0, 5.0)).astype(np.float32)
        self.k = rng.normal(size=(3, 3)).astype(np.float32) / 90.0
        self.amp = rng.uniform(1.0, 3.0, 3).astype(np.float32)

    def __call__(self, world: np.ndarray) -> np.ndarray:
        p = (world - self.shift.astype(np.float32)) @ self.rot  # inverse rigid motion (R^T applied)
        return p + self.amp * np.sin(p @ self.k)


def _tumor_compartments(
    tumor: np.ndarray, score: np.ndarray, out: L.Outcome
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split post-treatment tumor voxels into viable (rim), necrosis and Lipiodol (core) by volume shares."""
    post_total = out.shrink
    shares = np.array([out.viable_fraction, 0.55 * out.necrosis_fraction, out.lipiodol_fraction]) / post_total
    values = score[tumor]
    viable = np.zeros_like(tumor)
    necrosis = np.zeros_like(tumor)
    lipiodol = np.zeros_like(tumor)
    if values.size == 0:
        return viable, necrosis, lipiodol
    cut_viable = np.quantile(values, 1.0 - shares[0])
    cut_lip = np.quantile(values, shares[2]) if shares[2] > 0 else -np.inf
    viable[tumor] = values >= cut_viable
    lipiodol[tumor] = (values < cut_lip) & (values < cut_viable)
    necrosis[tumor] = ~viable[tumor] & ~lipiodol[tumor]
    return viable, necrosis, lipiodol


def tumour_look(visible: L.VisibleBiology | None) -> tuple[tuple[float, float, float], float]:
    """The viable tumour's HU in the NC, AP and PVP phases and its texture amplitude for `visible`."""
    base = TISSUE_HU["viable"]
    if visible is None:  # liver-1: every tumour alike
        return (float(base[0]), float(base[1]), float(base[2])), TEXTURE_HU
    shift = visible.vascularity - MEAN_VASCULARITY
    hu = tuple(float(b + k * shift) for b, k in zip(base, ENHANCEMENT_HU, strict=True))
    texture = TEXTURE_HU * float(np.exp(TEXTURE_SLOPE * (visible.sensitivity["anthracycline"] - 0.5)))
    return (hu[0], hu[1], hu[2]), texture


def _render_phase(masks, grid, phase_idx, tex, rng, noise_hu, tumour) -> np.ndarray:
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[masks["body"]] = -100.0 + 12 * tex[masks["body"]]
    for name, tissue in (
        ("muscle", "muscle"),
        ("liver", "liver"),
        ("spleen", "spleen"),
        ("kidney_left", "kidney"),
        ("kidney_right", "kidney"),
        ("aorta", "aorta"),
        ("spine", "spine"),
        ("viable", "viable"),
        ("necrosis", "necrosis"),
    ):
        m = masks[name]
        hu[m] = TISSUE_HU[tissue][phase_idx] + TEXTURE_HU * tex[m]
    tumour_hu, tumour_texture = tumour
    m = masks["viable"]
    hu[m] = tumour_hu[phase_idx] + tumour_texture * tex[m]
    lip = masks["lipiodol"]
    hu[lip] = LIPIODOL_HU + 150.0 * np.clip(tex[lip], -1, 1)
    return finish_ct(hu, grid, rng, noise_hu)


def _phases_present(rng: np.random.Generator) -> tuple[str, ...]:
    u = rng.random()
    if u < 0.735:
        return PHASES
    if u < 0.975:
        return ("AP", "PVP") if rng.random() < 0.7 else ("NC", "PVP")
    return ("PVP",)


@dataclass
class ClinicalDraw:
    """Everything of a case drawn before any image: the tabular truth. `rng` continues into the images."""

    rng: np.random.Generator
    case_id: str
    regions: dict[str, Region]
    width: float
    patient: L.LiverPatient
    gold: Protocol
    gold_outcome: L.Outcome
    os_weeks: float
    event: int


def draw_clinical(
    index: int, seed: int, site: str, protocols: str = "practice", generator: str = L.DEFAULT_GENERATOR
) -> ClinicalDraw:
    """The patient, treating protocol and observed survival of case `index`, as `write_case` draws them.

    Tabular studies (the survival baselines) use it to get a cohort's rows without rendering CT.
    """
    rng = np.random.default_rng([seed, index, 2])
    case_id = f"HCC_S{'I' if site == 'internal' else 'E'}{index + 1:03d}"
    regions, width, liver_c, liver_r = abdomen(rng)
    patient = L.sample_patient(case_id, rng, liver_c, liver_r, generator)
    if patient.truth.images_show_biology:  # its own stream: the draws of liver-1 stay as they were
        patient = replace(
            patient,
            visible=L.sample_visible(
                patient.profile, np.random.default_rng([seed, index, 4]), patient.truth.visible_noise
            ),
        )
    gold = L.physician_protocol(patient, site, rng) if protocols == "practice" else L.random_protocol(rng)
    gold_out = L.outcome(patient, gold)
    os_weeks, event = L.sample_survival(gold_out, rng)
    return ClinicalDraw(rng, case_id, regions, width, patient, gold, gold_out, os_weeks, event)


def clinical_record(row: dict[str, object]) -> dict[str, object]:
    """The clinical data of a cohort.csv row in the TACE app's schema (field names and units of
    `oncoplan.tace.patient`: age years, sex M/F, Child-Pugh class, AFP ng/mL, vascular invasion true/false,
    nodularity, largest diameter cm): the row's own values, recoded, none added; a value the row leaves
    empty (Tr_Size, often unreported) is not given."""
    record: dict[str, object] = {}
    for name, column in TCIA_COLUMNS.items():
        value = row.get(column, "")
        if value == "" or value is None:
            continue
        if name == "sex":
            value = SEXES[int(value) - 1]  # TCIA coding: 1 male, 2 female
        elif name == "vascular_invasion":
            value = bool(int(value))
        record[name] = value
    return record


def write_case(
    root: Path,
    index: int,
    seed: int,
    site: str,
    size: str,
    protocols: str = "practice",
    generator: str = L.DEFAULT_GENERATOR,
) -> dict[str, object]:
    """Generate case `index` into root/<case_id>/ and return its cohort.csv row (TCIA column names).

    `protocols`: "practice" draws the treating protocol from the site's practice (the physician's
    "gold"); "random" draws it uniformly from the conflict-free action space (world-model training).
    """
    clinical = draw_clinical(index, seed, site, protocols, generator)
    rng, case_id, regions, width = clinical.rng, clinical.case_id, clinical.regions, clinical.width
    patient, gold, gold_out = clinical.patient, clinical.gold, clinical.gold_outcome
    os_weeks, event = clinical.os_weeks, clinical.event
    oracle = L.oracle_protocol(patient)
    oracle_out = L.outcome(patient, oracle)
    noise = 14.0 if site == "internal" else 22.0

    uid = lambda *p: stable_uid(seed, site, index, "liver", *p)  # noqa: E731
    pre_day = date(2008, 1, 1) + timedelta(days=int(rng.integers(0, 2500)))
    post_day = pre_day + timedelta(days=int(rng.integers(28, 70)))
    person = Patient(
        case_id,
        f"SYNTHETIC^{case_id}",
        f"{pre_day.year - patient.age}0101",
        "M" if patient.sex == 1 else "F",
        patient.age,
    )
    case_dir = root / case_id
    (case_dir / "labels").mkdir(parents=True)
    series_rows: dict[str, str] = {}
    for study_name, day, pose in (("pre", pre_day, None), ("post", post_day, Pose(rng))):
        grid = sample_grid(rng, width, 125.0, -125.0, (1.25, 2.5, 2.5, 2.5, 5.0, 5.0), size, feet_first=0.15)
        study_regions = dict(regions)
        if study_name == "pre":
            study_regions["tumor"] = Region([lesion_shape(les) for les in patient.lesions])
        else:
            shrink = gold_out.shrink ** (1.0 / 3.0)
            study_regions["tumor"] = Region([lesion_shape(les, shrink) for les in patient.lesions])
        masks = rasterise(study_regions, grid, pose, pose.max_displacement_mm if pose else 0.0)
        masks["tumor"] &= masks["liver"]
        tex = smooth_field(grid, rng, 5.0, pose)
        empty = np.zeros(grid.shape, dtype=bool)
        if study_name == "pre":
            masks |= {"viable": masks["tumor"], "necrosis": empty, "lipiodol": empty}
        else:
            # Viable tissue survives at the rim, deposits sit in the core.
            rim = smooth_field(grid, np.random.default_rng([seed, index, 3]), 12.0, pose)
            masks |= dict(
                zip(("viable", "necrosis", "lipiodol"), _tumor_compartments(masks["tumor"], rim, gold_out), strict=True)
            )
        masks["liver"] &= ~masks["tumor"]
        ap, pvp = CONTRAST_PAIRS[rng.integers(len(CONTRAST_PAIRS))]
        descriptions = {"NC": str(rng.choice(NON_CONTRAST)), "AP": ap, "PVP": pvp}
        study = Study(
            uid(study_name),
            day.strftime("%Y%m%d"),
            "101500",
            f"{case_id}{study_name[:2].upper()}",
            study_name.upper(),
            "CT ABDOMEN LIVER 3 PHASE",
        )
        frame = uid(study_name, "for")
        written = {}
        for number, phase in enumerate(_phases_present(rng), start=2):
            delay = BOLUS_DELAY_S[phase]
            # Bolus injected at 10:15:00; the non-contrast scan a minute before it.
            seconds = 10 * 3600 + 15 * 60 + (delay if delay is not None else -60)
            extra: dict[str, object] = {
                "AcquisitionTime": f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}"
            }
            if delay is not None:
                extra["ContrastBolusStartTime"] = "101500"
            series = Series(
                uid(study_name, phase),
                number,
                descriptions[phase],
                frame,
                "ABDOMEN",
                "OMNIPAQUE 350" if delay is not None else None,
                manufacturer="GE MEDICAL SYSTEMS",
                model="LightSpeed VCT",
                extra=extra,
            )
            hu = _render_phase(masks, grid, PHASES.index(phase), tex, rng, noise, tumour_look(patient.visible))
            ct = ct_datasets(hu, grid, person, study, series)
            write_datasets(ct, case_dir / "dicom" / study_name / f"series_{number:03d}")
            written[phase] = ct
            series_rows[f"{study_name}_{phase}_series"] = f"{case_id}/dicom/{study_name}/series_{number:03d}"
        save_label_map(masks, SEG_ORDER, grid, case_dir / "labels" / f"{study_name}.nii.gz")
        reference = next(written[p] for p in ("PVP", "AP", "NC") if p in written)
        specs = [
            SegmentSpec("Liver", ANATOMY, codes.SCT.Liver),
            SegmentSpec("Viable tumor", MORPH, codes.SCT.Neoplasm),
            SegmentSpec("Necrosis", MORPH, codes.SCT.Necrosis),
            SegmentSpec("Lipiodol deposit", codes.SCT.PhysicalObject, codes.SCT.ContrastAgent),
        ]
        liver_all = masks["liver"] | masks["tumor"]
        write_seg(
            [liver_all, masks["viable"], masks["necrosis"], masks["lipiodol"]],
            specs,
            reference,
            case_dir / "labels" / f"{study_name}_seg.dcm",
            300,
            f"{study_name.upper()} liver tumor GT",
        )

    truth = {
        "case_id": case_id,
        "synthetic": True,
        "generator": patient.generator,
        "profile": asdict(patient.profile),
        "visible": None if patient.visible is None else asdict(patient.visible),
        "lesions": [asdict(les) for les in patient.lesions],
        "gold_protocol": str(gold),
        "oracle_protocol": str(oracle),
        "gold_outcome": asdict(gold_out),
        "oracle_outcome": asdict(oracle_out),
    }
    (case_dir / "truth.json").write_text(json.dumps(truth, indent=1))
    row = {
        "TCIA_ID": case_id,
        "site": site,
        "age": patient.age,
        "Sex": patient.sex,
        "CPS": patient.cps,
        "Tr_Size": "" if patient.tr_size_cm is None else patient.tr_size_cm,
        "tumor_nodul": "multinodular" if len(patient.lesions) > 1 else "uninodular",
        "Vascular invasion": patient.vascular_invasion,
        "AFP": round(patient.afp, 1),
        "chemotherapy": str(gold),
        "OS": round(os_weeks, 2),
        "Death_1_StillAliveorLostToFU_0": event,
        "gold_protocol": str(gold),
        "oracle_protocol": str(oracle),
        "gold_viable_fraction": round(gold_out.viable_fraction, 4),
        "oracle_viable_fraction": round(oracle_out.viable_fraction, 4),
        "gold_expected_os_weeks": round(gold_out.expected_os_weeks, 1),
        "oracle_expected_os_weeks": round(oracle_out.expected_os_weeks, 1),
        **{k: series_rows.get(k, "") for k in (f"{s}_{p}_series" for s in ("pre", "post") for p in PHASES)},
        "pre_labels": f"{case_id}/labels/pre.nii.gz",
        "post_labels": f"{case_id}/labels/post.nii.gz",
        "pre_seg": f"{case_id}/labels/pre_seg.dcm",
        "post_seg": f"{case_id}/labels/post_seg.dcm",
    }
    # Pre-treatment clinical data in the pre-treatment study: `oncoplan plan -i <case>/dicom/pre` reads it.
    (case_dir / "dicom" / "pre" / "clinical.json").write_text(json.dumps(clinical_record(row), indent=1))
    return row

"""Synthetic liver TACE cohort: TCIA layout, valid DICOM, misregistration, response and survival truth."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sksurv.nonparametric import kaplan_meier_estimator

from oncoplan.tace.actions import Protocol
from oncoplan.training.synth import liver as L
from oncoplan.training.synth.write_liver import CONTRAST_PAIRS, NON_CONTRAST

from .conftest import shared_file
from .dicom_validate import dciodvfy_available, validate_all
from .helpers import cohort_rows, read_series


def test_tcia_columns_and_layout(liver_cohort: Path) -> None:
    rows = cohort_rows(liver_cohort)
    assert len(rows) == 2
    for col in ("TCIA_ID", "OS", "Death_1_StillAliveorLostToFU_0", "chemotherapy", "CPS", "AFP", "Tr_Size"):
        assert col in rows[0]
    for row in rows:
        case = liver_cohort / row["TCIA_ID"]
        assert {p.name for p in (case / "dicom").iterdir()} == {"pre", "post"}
        for study in ("pre", "post"):
            series = [row[f"{study}_{p}_series"] for p in ("NC", "AP", "PVP") if row[f"{study}_{p}_series"]]
            assert 1 <= len(series) <= 3 and row[f"{study}_PVP_series"]
            assert (liver_cohort / row[f"{study}_labels"]).is_file()
            assert (liver_cohort / row[f"{study}_seg"]).is_file()
        truth = json.loads((case / "truth.json").read_text())
        assert truth["gold_protocol"] == row["gold_protocol"] == row["chemotherapy"]


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_every_file_passes_dciodvfy(liver_cohort: Path) -> None:
    files = sorted(liver_cohort.rglob("*.dcm"))
    assert len(files) > 100
    assert validate_all(files) == {}


@pytest.mark.needs_shared
def test_series_descriptions_come_from_the_real_collection(liver_cohort: Path) -> None:
    real = set(NON_CONTRAST) | {d for pair in CONTRAST_PAIRS for d in pair}
    index = shared_file("data/hcc_tace_seg/series_index.csv")
    if index.is_file():
        with open(index) as fh:
            seen = {r["SeriesDescription"] for r in csv.DictReader(fh) if r["Modality"] == "CT"}
        assert real <= seen
    for f in liver_cohort.rglob("series_*/CT0001.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.get("SeriesDescription", "") in real
        assert ds.Manufacturer == "GE MEDICAL SYSTEMS"


def test_phases_enhance_like_hcc() -> None:
    from oncoplan.training.synth.write_liver import TISSUE_HU

    nc, ap, pvp = 0, 1, 2
    assert TISSUE_HU["viable"][ap] > TISSUE_HU["liver"][ap]  # arterial hyper-enhancement
    assert TISSUE_HU["viable"][pvp] < TISSUE_HU["liver"][pvp]  # portal-venous washout
    assert TISSUE_HU["necrosis"][ap] - TISSUE_HU["necrosis"][nc] < 5  # necrosis does not enhance


def test_post_scan_is_misregistered_and_shows_treatment(liver_cohort: Path) -> None:
    for row in cohort_rows(liver_cohort):
        pre = sitk.ReadImage(str(liver_cohort / row["pre_labels"]))
        post = sitk.ReadImage(str(liver_cohort / row["post_labels"]))
        post_on_pre = sitk.GetArrayFromImage(sitk.Resample(post, pre, sitk.Transform(), sitk.sitkNearestNeighbor))
        a = sitk.GetArrayFromImage(pre)
        liver_pre, liver_post = (a == 1) | (a >= 7), (post_on_pre == 1) | (post_on_pre >= 7)
        dice = 2 * (liver_pre & liver_post).sum() / (liver_pre.sum() + liver_post.sum())
        assert 0.5 < dice < 0.97, dice  # same liver, moved
        p = sitk.GetArrayFromImage(post)
        legend = json.loads((liver_cohort / row["post_labels"].replace(".nii.gz", ".json")).read_text())
        codes = {name: int(k) for k, name in legend.items()}
        assert (a == codes["viable"]).sum() > (p == codes["viable"]).sum()  # treatment killed tumor
        assert (p == codes["necrosis"]).sum() + (p == codes["lipiodol"]).sum() > 0
        pvp = sitk.GetArrayFromImage(read_series(liver_cohort / row["post_PVP_series"]))
        if "Lipiodol" in row["gold_protocol"] and (p == codes["lipiodol"]).sum() > 20:
            assert 300 < np.median(pvp[p == codes["lipiodol"]]) < 600


def _patients(n: int, seed: int = 0, generator: str = "liver-1") -> list[L.LiverPatient]:
    rng = np.random.default_rng(seed)
    centre, radii = np.array([-55.0, -5, 20]), np.array([80.0, 75, 85])
    patients = [L.sample_patient(f"p{i}", rng, centre, radii, generator) for i in range(n)]
    truth = L.GROUND_TRUTHS[generator]
    if truth.images_show_biology:
        patients = [
            dataclasses.replace(p, visible=L.sample_visible(p.profile, rng, truth.visible_noise)) for p in patients
        ]
    return patients


def test_protocols_give_different_responses_for_one_patient() -> None:
    p = _patients(1)[0]
    a = L.outcome(p, Protocol.parse("Cisplatin; Doxorubicin; Mitomycin; Lipiodol"))
    b = L.outcome(p, Protocol.parse("Raltitrexed; Gelatin Sponge"))
    assert a.viable_fraction != b.viable_fraction and a.linear_predictor != b.linear_predictor
    assert L.outcome(p, Protocol.parse("Cisplatin; Lipiodol")) == L.outcome(p, Protocol.parse("cisplatin, lipiodol"))


@pytest.mark.parametrize(
    ("clean", "conflicting"),
    [
        ("Cisplatin; Lipiodol", "Cisplatin; Nedaplatin; Lipiodol"),  # two platinum (Nedaplatin!)
        ("Epirubicin; Lipiodol", "Epirubicin; Pirarubicin; Lipiodol"),  # two anthracyclines (THP!)
        ("Doxorubicin; PVA", "Doxorubicin; PVA; Gelatin Sponge"),
        ("Doxorubicin; PVA", "Doxorubicin; PVA; Absolute Alcohol"),
    ],
)
def test_conflicting_protocols_score_worse(clean: str, conflicting: str) -> None:
    for p in _patients(20):
        a, b = L.outcome(p, Protocol.parse(clean)), L.outcome(p, Protocol.parse(conflicting))
        assert b.toxicity > a.toxicity
        assert b.expected_os_weeks < a.expected_os_weeks + 1e-9 or "PVA" in clean


def test_oracle_is_best_and_regret_is_non_negative() -> None:
    space = L.protocol_space(max_drugs=2)
    for p in _patients(5):
        best = L.oracle_protocol(p, space)
        assert L.regret_weeks(p, best, space) == pytest.approx(0.0)
        assert L.regret_weeks(p, Protocol.parse("Cisplatin; Doxorubicin; Mitomycin; Lipiodol"), space) >= 0.0


def test_population_oracle_ignores_the_hidden_profile_and_weighs_toxicity() -> None:
    """The population oracle sees the covariates, not the response profile: two patients differing
    only in the profile get one protocol; it does far better than a random pick, and poorer liver
    function (more toxicity per drug) never makes it add drugs."""
    import dataclasses

    space = L.protocol_space(("Cisplatin", "Doxorubicin", "Mitomycin"), ("Lipiodol", "LC Beads"), 2, 2)
    patients = _patients(30, seed=4)
    a = patients[0]
    b = dataclasses.replace(a, profile=patients[1].profile)
    assert L.population_protocol(a, space, draws=50) == L.population_protocol(b, space, draws=50)
    chosen = [L.population_protocol(p, space, draws=100) for p in patients]
    population = np.mean([L.regret_weeks(p, c, space) for p, c in zip(patients, chosen, strict=True)])
    random_pick = np.mean([L.regret_weeks(p, q, space) for p in patients for q in space])
    assert 0.0 <= population < 0.5 * random_pick
    for p in patients[:5]:
        drugs = [len(L.population_protocol(dataclasses.replace(p, cps=c), space, draws=100).drugs) for c in "ABC"]
        assert drugs == sorted(drugs, reverse=True), drugs


@pytest.mark.parametrize("generator", L.GENERATORS)
def test_survival_matches_the_real_cohort(generator: str) -> None:
    rng = np.random.default_rng(1)
    times, events = [], []
    for p in _patients(600, seed=2, generator=generator):
        t, e = L.sample_survival(L.outcome(p, L.physician_protocol(p, "internal", rng)), rng)
        times.append(t)
        events.append(bool(e))
    x, s = kaplan_meier_estimator(np.array(events), np.array(times))
    median = x[np.argmax(s <= 0.5)]
    assert 85 < median < 125, median  # real cohort: 104.4 weeks
    assert 0.10 < 1 - np.mean(events) < 0.22  # real cohort: 12/105 censored


def test_physicians_choose_the_real_tables_regimens_conditioned_on_the_patient() -> None:
    """liver-2: internal physicians draw the HCC-TACE-Seg regimens, and as in the real table Child-Pugh B
    patients get the three-drug cTACE more often than Child-Pugh A patients; the external site's menu stays
    its own and is tilted by the same covariates."""
    from oncoplan.planner.prior import PRACTICE
    from oncoplan.training.synth.practice import MULTI_DRUG, site_practice

    real = {str(Protocol.parse(k)) for k in PRACTICE["internal"]} | {"Cisplatin; Lipiodol"}
    external = {str(Protocol.parse(k)) for k in PRACTICE["external"]}
    rng = np.random.default_rng(0)
    for p in _patients(40, generator="liver-2"):
        assert str(L.physician_protocol(p, "internal", rng)) in real
        assert str(L.physician_protocol(p, "external", rng)) in external
    patient = _patients(1, generator="liver-2")[0]
    a, b = (dataclasses.replace(patient, cps=c) for c in "AB")
    assert site_practice("internal", b)[MULTI_DRUG] > site_practice("internal", a)[MULTI_DRUG] + 0.1
    assert sum(site_practice("external", a).values()) == pytest.approx(1.0)
    assert site_practice("external", a) != site_practice("external", b)


@pytest.mark.needs_shared
def test_the_shipped_practice_fit_is_what_the_real_table_gives(tmp_path: Path) -> None:
    """hcc_tace_seg_practice.json is reproduced by its own command on the real table."""
    from oncoplan.training.synth.practice import FIT_PATH, main

    out = tmp_path / "fit.json"
    assert main(["--clinical", str(shared_file("data/hcc_tace_seg/clinical.csv")), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(FIT_PATH.read_text())


@pytest.mark.parametrize(("generator", "share"), [("liver-2", 0.8), ("liver-3", 0.6)])
def test_a_perfect_image_reader_sits_between_the_population_oracle_and_the_oracle(generator: str, share: float) -> None:
    """With what the images show, the image-informed oracle loses less than the population oracle on average
    (liver-3: at most 60% of it, the images decide) and more than the full oracle (the rest of the profile
    stays hidden); with nothing visible it is the population oracle."""
    space = L.protocol_space(("Cisplatin", "Doxorubicin", "Mitomycin"), ("Lipiodol", "LC Beads"), 2, 2)
    patients = _patients(60, seed=5, generator=generator)
    population = [L.regret_weeks(p, L.population_protocol(p, space, draws=100), space) for p in patients]
    image = [L.regret_weeks(p, L.image_informed_protocol(p, space, draws=100), space) for p in patients]
    assert 0.0 < np.mean(image) < share * np.mean(population)
    blind = dataclasses.replace(patients[0], visible=None)
    assert L.image_informed_protocol(blind, space, draws=50) == L.population_protocol(blind, space, draws=50)


def test_the_pre_treatment_scan_shows_vascularity_and_anthracycline_sensitivity(liver2_cohort: Path) -> None:
    """A hypervascular tumour enhances more in the arterial phase and washes out more in the portal-venous
    one; an anthracycline-sensitive one has more texture; each case's arterial contrast to the liver is the
    one its visible vascularity sets, within the scanner's noise; cohort.json names the generator."""
    from oncoplan.training.synth.write_liver import TISSUE_HU, tumour_look

    low, high = (L.VisibleBiology(v, {"anthracycline": s}) for v, s in ((0.1, 0.1), (0.9, 0.9)))
    (_, ap_low, pvp_low), tex_low = tumour_look(low)
    (_, ap_high, pvp_high), tex_high = tumour_look(high)
    assert ap_high > ap_low > TISSUE_HU["liver"][1] and pvp_high < pvp_low < TISSUE_HU["liver"][2]
    assert tex_high > 2 * tex_low
    assert json.loads((liver2_cohort / "cohort.json").read_text())["generator"] == "liver-2"
    for row in cohort_rows(liver2_cohort):
        truth = json.loads((liver2_cohort / row["TCIA_ID"] / "truth.json").read_text())
        assert truth["generator"] == "liver-2"
        if not row["pre_AP_series"]:
            continue
        visible = L.VisibleBiology(truth["visible"]["vascularity"], truth["visible"]["sensitivity"])
        image = read_series(liver2_cohort / row["pre_AP_series"])
        label_map = sitk.ReadImage(str(liver2_cohort / row["pre_labels"]))  # same grid, its own slice order
        hu = sitk.GetArrayFromImage(image)
        labels = sitk.GetArrayFromImage(sitk.Resample(label_map, image, sitk.Transform(), sitk.sitkNearestNeighbor))
        legend = {
            v: int(k)
            for k, v in json.loads((liver2_cohort / row["pre_labels"].replace(".nii.gz", ".json")).read_text()).items()
        }
        contrast = np.median(hu[labels == legend["viable"]]) - np.median(hu[labels == legend["liver"]])
        assert contrast == pytest.approx(tumour_look(visible)[0][1] - TISSUE_HU["liver"][1], abs=12.0)

"""TCIA HCC-TACE-Seg indexer: phase rules on the real SeriesDescriptions, a fake TCIA download built
from the synthetic liver cohort (indexed, then prepared with DICOM-SEG labels), and bad input."""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from oncoplan.tace.phases import CTSeries, description_phase, dicom_seconds, resolve_phases, timing_phase
from oncoplan.training.tace.tcia_index import main

from .conftest import shared_file

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/hcc_tace_seg"
PHASES = ("NC", "AP", "PVP")

# Every distinct CT SeriesDescription of series_index.csv -> what the description alone says.
EXPECTED_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "": ("unknown", ""),
    "2.5 SOFT": ("unknown", ""),
    "2.5 STANDARD": ("unknown", ""),
    "3 PHASE LIVER (ABD)": ("contrast", ""),
    "ABD": ("contrast", ""),
    "ARTERIAL": ("AP", "desc:arterial"),
    "C-A-P": ("contrast", ""),
    "LIVER 2 PHASE (AP)": ("contrast", ""),
    "LIVER 2 PHASE (C/A/P)": ("contrast", ""),
    "LIVER 2PHASE CAP": ("contrast", ""),
    "LIVER 3 PHASE (AP)": ("contrast", ""),
    "LIVER 3 PHASE (C/A/P)": ("contrast", ""),
    "PRE": ("NC", "desc:non-contrast"),
    "PRE CONTRAST": ("NC", "desc:non-contrast"),
    "PRE LIVER": ("NC", "desc:non-contrast"),
    "Recon 2: 2 PHASE LIVER (ABD)": ("AP", "desc:recon-2"),
    "Recon 2: 3 PHASE LIVER (ABD)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER  2PHASE WITH CON": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 2 PHASE (AP)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 2 PHASE (C/A/P)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 2 PHASE WITH CON": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 2PHASE CAP": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 3 PHASE (AP)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 3 PHASE (C/A)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 3 PHASE (C/A/P)": ("AP", "desc:recon-2"),
    "Recon 2: LIVER 3 PHASE A/P": ("AP", "desc:recon-2"),
    "Recon 2: PRE": ("NC", "desc:non-contrast"),
    "Recon 2: PRE LIVER": ("NC", "desc:non-contrast"),
    "Recon 3: 2 PHASE LIVER (ABD)": ("PVP", "desc:recon-3"),
    "Recon 3: 3 PHASE LIVER (ABD)": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER  2PHASE WITH CON": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 2 PHASE (AP)": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 2 PHASE (C/A/P)": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 2 PHASE WITH CON": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 2PHASE CAP": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 3 PHASE (AP)": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 3 PHASE (C/A)": ("PVP", "desc:recon-3"),
    "Recon 3: LIVER 3 PHASE (C/A/P)": ("PVP", "desc:recon-3"),
    "Recon 3: PRE LIVER": ("NC", "desc:non-contrast"),
    "VENOUS": ("PVP", "desc:venous"),
}

# Real study layouts (SeriesDescriptions in SeriesNumber order, no timing) -> phases.
EXPECTED_STUDIES: list[tuple[tuple[str, ...], tuple[str | None, ...]]] = [
    (("Recon 2: PRE LIVER", "Recon 2: LIVER 2 PHASE (C/A/P)", "Recon 3: LIVER 2 PHASE (C/A/P)"), ("NC", "AP", "PVP")),
    (("PRE LIVER", "Recon 2: LIVER 3 PHASE (AP)", "LIVER 3 PHASE (AP)"), ("NC", "AP", "PVP")),
    (("Recon 2: PRE LIVER", "Recon 3: LIVER 3 PHASE (AP)", "LIVER 3 PHASE (AP)"), ("NC", "PVP", "AP")),
    (("PRE LIVER", "", ""), ("NC", "AP", "PVP")),
    (("2.5 STANDARD", "2.5 STANDARD"), ("NC", "PVP")),
    (("Recon 2: PRE LIVER", "2.5 STANDARD"), ("NC", "PVP")),
    (("PRE", "C-A-P", "C-A-P"), ("NC", "AP", "PVP")),
    (("PRE CONTRAST", "ARTERIAL", "VENOUS"), ("NC", "AP", "PVP")),
    (("Recon 2: LIVER 3 PHASE (AP)", "Recon 3: LIVER 3 PHASE (AP)", "LIVER 3 PHASE (AP)"), ("AP", "PVP", None)),
    (("C-A-P",), ("PVP",)),
    (("2.5 STANDARD",), ("PVP",)),
    (("Recon 2: LIVER 3 PHASE (AP)", "PRE LIVER"), ("AP", "NC")),
]


def _study(descriptions: tuple[str, ...]) -> list[CTSeries]:
    return [CTSeries(f"1.2.{i}", i + 2, d) for i, d in enumerate(descriptions)]


@pytest.mark.parametrize(("description", "expected"), list(EXPECTED_DESCRIPTIONS.items()))
def test_description_rules(description: str, expected: tuple[str, str]) -> None:
    assert description_phase(description) == expected


@pytest.mark.needs_shared
def test_description_table_covers_series_index() -> None:
    index = shared_file("data/hcc_tace_seg/series_index.csv")
    with open(index, newline="") as fh:
        found = {r["SeriesDescription"] for r in csv.DictReader(fh) if r["Modality"] == "CT"}
    assert found == set(EXPECTED_DESCRIPTIONS)


@pytest.mark.parametrize(("descriptions", "phases"), EXPECTED_STUDIES)
def test_study_rules(descriptions: tuple[str, ...], phases: tuple[str | None, ...]) -> None:
    series = _study(descriptions)
    resolve_phases(series)
    assert tuple(s.phase for s in series) == phases


@pytest.mark.needs_shared
def test_every_real_study_gets_distinct_phases() -> None:
    index = shared_file("data/hcc_tace_seg/series_index.csv")
    studies: dict[str, list[CTSeries]] = defaultdict(list)
    with open(index, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["Modality"] == "CT":
                studies[r["StudyInstanceUID"]].append(
                    CTSeries(r["SeriesInstanceUID"], int(r["SeriesNumber"]), r["SeriesDescription"])
                )
    assert len(studies) == 211
    plain_only = 0
    for series in studies.values():
        chosen = resolve_phases(series)
        assert len({s.uid for s in chosen.values()}) == len(chosen)
        if "AP" not in chosen and "PVP" not in chosen:
            assert [s.description for s in series] == ["Recon 2: PRE LIVER"]  # nothing else to choose from
            plain_only += 1
    assert plain_only == 1


def test_timing_and_time_parsing() -> None:
    assert dicom_seconds("101535") == 10 * 3600 + 15 * 60 + 35
    assert dicom_seconds("10:15:35.5") == pytest.approx(36935.5)
    assert dicom_seconds("") is None and dicom_seconds("abc") is None
    start = dicom_seconds("101500")
    assert timing_phase(start + 35, start) == "AP"
    assert timing_phase(start + 70, start) == "PVP"
    assert timing_phase(start + 300, start) == "delayed"
    assert timing_phase(None, start) is None
    assert timing_phase(10.0, 86390.0) == "AP"  # across midnight
    # timing beats a non-committal description, and a later acquisition wins over SeriesNumber
    late, early = CTSeries("a", 3, "", start + 70, start), CTSeries("b", 4, "", start + 35, start)
    resolve_phases([late, early])
    assert (late.phase, late.rule, early.phase, early.rule) == ("PVP", "timing", "AP", "timing")
    late, early = CTSeries("a", 3, "", start + 70), CTSeries("b", 4, "", start + 35)
    resolve_phases([late, early])  # nothing says contrast: the earlier scan is the plain one
    assert (early.phase, late.phase, late.rule) == ("NC", "PVP", "order:time")
    late.contrast_agent = early.contrast_agent = "OMNIPAQUE 350"
    resolve_phases([late, early])
    assert (early.phase, late.phase, late.rule) == ("AP", "PVP", "order:time")


# ---------------------------------------------------------------------------------------------
# A fake TCIA download from the synthetic cohort
# ---------------------------------------------------------------------------------------------

DELETE = object()
NO_CONTRAST_TAGS = {k: DELETE for k in ("AcquisitionTime", "ContrastBolusStartTime", "ContrastBolusAgent")}
# (patient, study) -> phase -> (SeriesDescription, header edits, expected phase_rule)
PLAN: dict[tuple[str, str], dict[str, tuple[str, dict, str]]] = {
    ("HCC_001", "pre"): {
        "NC": ("PRE LIVER", {}, "desc:non-contrast"),
        "PVP": ("C-A-P", {}, "timing"),
    },
    ("HCC_001", "post"): {
        "NC": ("2.5 STANDARD", NO_CONTRAST_TAGS, "order:number"),
        "PVP": ("2.5 STANDARD", NO_CONTRAST_TAGS, "order:number"),
    },
    ("HCC_002", "pre"): {
        "NC": ("Recon 2: PRE LIVER", {}, "desc:non-contrast"),
        "AP": ("Recon 2: LIVER 2 PHASE (C/A/P)", {}, "desc:recon-2"),
        "PVP": ("Recon 3: LIVER 2 PHASE (C/A/P)", {}, "desc:recon-3"),
    },
    ("HCC_002", "post"): {  # no bolus start time; SeriesNumbers swapped against acquisition order
        "NC": ("PRE LIVER", {}, "desc:non-contrast"),
        "AP": ("LIVER 3 PHASE (AP)", {"ContrastBolusStartTime": DELETE, "SeriesNumber": 4}, "order:time"),
        "PVP": ("", {"ContrastBolusStartTime": DELETE, "SeriesNumber": 3}, "order:time"),
    },
}
NEW_SERIES = ("SeriesInstanceUID", "SOPInstanceUID")
DATES = {"pre": "20090301", "post": "20090412", "third": "20090815"}
SEG_DESCRIPTION = {"pre": "Segmentation", "post": "AIMI liver-tumor radiologist 7 corrected segmentation"}


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.rng = random.Random(11)
        self.series: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.seg: dict[tuple[str, str], str] = {}
        self.studies: dict[tuple[str, str], str] = {}

    def name(self) -> str:
        return f"{self.rng.getrandbits(40):010x}"

    def folder(self, patient: str, study: str, text: str) -> Path:
        # NBIA-like: <patient>/<study folder>/<series folder>; post sorts before pre by name
        prefix = {"post": "01", "pre": "07", "third": "04"}[study]
        folder = self.studies.setdefault((patient, study), f"{prefix}-{self.name()}-NA-CT ABDOMEN")
        return self.root / patient / folder / f"{self.name()}-{_safe(text)}"

    def write(
        self, files: list[Path], out: Path, edits: dict, renew: tuple[str, ...] = (), salt: str = ""
    ) -> list[str]:
        """Copy `files` into `out` under shuffled names with `edits`; UIDs named in `renew` are new (from `salt`)."""
        order = self.rng.sample(range(1, len(files) + 1), len(files))
        written = []
        for path, n in zip(files, order, strict=True):
            ds = pydicom.dcmread(path)
            for key, value in edits.items():
                if value is DELETE:
                    if key in ds:
                        delattr(ds, key)
                else:
                    setattr(ds, key, value)
            for key in renew:
                setattr(ds, key, generate_uid(entropy_srcs=[str(ds[key].value), salt]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = out / f"1-{n:03d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target)
            written.append(str(target.resolve()))
        return written


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text) or "NA"


def build_tree(cohort: Path, root: Path) -> Tree:
    """HCC_001/HCC_002 from the synthetic cases (real descriptions, dates, SEG names, decoys),
    a third study for HCC_002, and HCC_003 with one study only."""
    tree = Tree(root)
    rows = pd.read_csv(cohort / "cohort.csv", dtype=str, keep_default_na=False)
    study_uid: dict[tuple[str, str], str] = {}
    for case, row in rows.iterrows():
        patient = f"HCC_{case + 1:03d}"
        ids = {"PatientID": patient, "PatientName": f"{patient}^"}
        for study in ("pre", "post"):
            present = {p: row[f"{study}_{p}_series"] for p in PHASES if row[f"{study}_{p}_series"]}
            plan = PLAN[(patient, study)]
            assert set(present) == set(plan), f"synthetic cohort changed: {patient} {study} has {set(present)}"
            dates = {"StudyDate": DATES[study]}
            for phase, folder in present.items():
                description, edits, _ = plan[phase]
                files = sorted((cohort / folder).glob("*.dcm"))
                out = tree.folder(patient, study, description)
                written = tree.write(files, out, {**ids, **dates, "SeriesDescription": description, **edits})
                tree.series[(patient, study, phase)] = set(written)
                study_uid[(patient, study)] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            seg_file = cohort / row[f"{study}_seg"]
            out = tree.folder(patient, study, SEG_DESCRIPTION[study])
            edits = {**ids, **dates, "SeriesDescription": SEG_DESCRIPTION[study]}
            tree.seg[(patient, study)] = tree.write([seg_file], out, edits)[0]
        # decoys: a less preferred SEG, and a preferred one that references another study's CT
        pre_seg = cohort / row["pre_seg"]
        if patient == "HCC_002":
            edits = {**ids, "StudyDate": DATES["pre"], "SeriesDescription": "AIMI liver-tumor AI segmentation"}
            tree.write([pre_seg], tree.folder(patient, "pre", "AIMI AI"), edits, NEW_SERIES, patient)
            # third study: the post NC series again, four months later
            files = sorted((cohort / row["post_NC_series"]).glob("*.dcm"))
            edits = {**ids, "StudyDate": DATES["third"], "SeriesDescription": "PRE LIVER"}
            tree.write(
                files, tree.folder(patient, "third", "PRE LIVER"), edits, ("StudyInstanceUID", *NEW_SERIES), "third"
            )
        else:
            edits = {
                **ids,
                "StudyDate": DATES["post"],
                "SeriesDescription": "Segmentation",
                "StudyInstanceUID": study_uid[(patient, "post")],
            }
            tree.write([pre_seg], tree.folder(patient, "post", "Segmentation"), edits, NEW_SERIES, patient)
    # HCC_003: only a pre study (HCC_001's CT under new UIDs)
    row = rows.iloc[0]
    for phase in ("NC", "PVP"):
        files = sorted((cohort / row[f"pre_{phase}_series"]).glob("*.dcm"))
        edits = {"PatientID": "HCC_003", "PatientName": "HCC_003^", "StudyDate": DATES["pre"]}
        renew = ("StudyInstanceUID", "FrameOfReferenceUID", *NEW_SERIES)
        tree.write(files, tree.folder("HCC_003", "pre", phase), edits, renew, "HCC_003")
    (root / "LICENSE.txt").write_text("CC BY 4.0\n")
    (root / "HCC_001" / "manifest.json").write_text("{}")
    return tree


def clinical_rows(out: Path) -> Path:
    """Header + HCC_001 + HCC_034 (renamed HCC_002, "doxorubicin LC beads") of the real table, quirks kept."""
    raw = (DATA / "clinical.csv").read_bytes().decode("utf-8-sig").splitlines()
    by_id = {line.split(",", 1)[0]: line for line in raw[1:]}
    text = "\n".join([raw[0], by_id["HCC_001"], by_id["HCC_034"].replace("HCC_034", "HCC_002", 1)])
    path = out / "clinical.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # BOM, no newline after the last row
    return path


@pytest.fixture(scope="module")
def indexed(liver_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tree, Path]:
    shared_file("data/hcc_tace_seg/clinical.csv")
    base = tmp_path_factory.mktemp("tcia")
    tree = build_tree(liver_cohort, base / "download")
    clinical = clinical_rows(base)
    out = base / "cohort"
    assert main(["--dicom", str(tree.root), "--clinical", str(clinical), "--out", str(out), "--quiet"]) == 0
    return out, tree, clinical


@pytest.mark.needs_shared
def test_index_recovers_studies_phases_and_segs(indexed: tuple[Path, Tree, Path]) -> None:
    out, tree, _ = indexed
    rows = pd.read_csv(out / "cohort.csv", dtype=str, keep_default_na=False).set_index("TCIA_ID")
    assert list(rows.index) == ["HCC_001", "HCC_002"]
    for patient, row in rows.iterrows():
        rules = []
        for study in ("pre", "post"):
            for phase in PHASES:
                value = row[f"{study}_{phase}_series"]
                expected = tree.series.get((patient, study, phase))
                if expected is None:
                    assert value == "", (patient, study, phase)
                    continue
                links = sorted((out / value).iterdir())
                assert all(p.is_symlink() for p in links)
                assert {str(p.resolve()) for p in links} == expected, (patient, study, phase)
                rules.append(f"{study}_{phase}={PLAN[(patient, study)][phase][2]}")
            seg = out / row[f"{study}_seg"]
            assert seg.is_symlink() and str(seg.resolve()) == tree.seg[(patient, study)]
            assert row[f"{study}_seg_description"] == SEG_DESCRIPTION[study]
            assert row[f"{study}_study_date"] == f"{DATES[study][:4]}-{DATES[study][4:6]}-{DATES[study][6:]}"
        assert row["phase_rule"] == "; ".join(rules)
    # clinical join (TCIA names kept; chemotherapy in keyword form, the free text kept beside it)
    assert rows.loc["HCC_001", "OS"] == "350.2857143"
    assert rows.loc["HCC_002", "chemotherapy_regimen"] == "doxorubicin LC beads"
    assert rows.loc["HCC_002", "chemotherapy"] == rows.loc["HCC_002", "protocol"] == "Doxorubicin; Lipiodol; LC Beads"
    assert set(rows.loc["HCC_001", "protocol"].split("; ")) == {"Cisplatin", "Doxorubicin", "Mitomycin", "Lipiodol"}


@pytest.mark.needs_shared
def test_report_lists_exclusions_and_warnings(indexed: tuple[Path, Tree, Path]) -> None:
    out, _, _ = indexed
    report = (out / "index_report.md").read_text()
    assert "| HCC_003 | only one CT study (2009-03-01): no pre/post pair |" in report
    assert "HCC_002: third CT study 2009-08-15" in report
    assert "HCC_001: post SEG 'Segmentation' rejected: references no CT series of this study" in report
    assert "HCC_003: no row in the clinical table" in report
    assert "2 not DICOM" in report
    series = pd.read_csv(out / "series.csv", keep_default_na=False)
    chosen = series[series["rule"] == "chosen"]
    assert len(chosen) == 4 and set(chosen["description"]) == set(SEG_DESCRIPTION.values())
    ai = series[series["description"] == "AIMI liver-tumor AI segmentation"]
    assert len(ai) == 1 and ai.iloc[0]["note"].startswith("not chosen")


@pytest.mark.needs_shared
def test_prepare_reads_the_index(indexed: tuple[Path, Tree, Path], tmp_path: Path) -> None:
    from oncoplan.training.tace.prepare import prepare_cohort

    out, _, _ = indexed
    prepared = tmp_path / "prepared"
    summary = prepare_cohort(out, prepared, spacing=(6.0, 6.0, 6.0), labels="seg", quiet=True)
    assert summary
    data = json.loads((prepared / "datalist.json").read_text())["data"]
    assert [e["case_id"] for e in data] == ["HCC_001", "HCC_002"]
    assert data[0]["os_weeks"] == pytest.approx(350.2857143)
    assert all(sum(e["protocol_multi_hot"]) >= 3 for e in data)
    assert all((prepared / e["post_label"]).is_file() for e in data)


@pytest.mark.needs_shared
def test_seg_preference_is_configurable(indexed: tuple[Path, Tree, Path], tmp_path: Path) -> None:
    _, tree, clinical = indexed
    out = tmp_path / "ai"
    args = ["--dicom", str(tree.root), "--clinical", str(clinical), "--out", str(out), "--quiet"]
    assert main([*args, "--seg-prefer", "AIMI*AI*,AIMI*"]) == 0
    rows = pd.read_csv(out / "cohort.csv", dtype=str, keep_default_na=False).set_index("TCIA_ID")
    assert list(rows.index) == ["HCC_002"]  # HCC_001's pre study has only the collection's own SEG
    assert rows.loc["HCC_002", "pre_seg_description"] == "AIMI liver-tumor AI segmentation"
    assert "HCC_001 | pre study 2009-03-01 has no usable SEG" in (out / "index_report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], needle: str, out: Path) -> None:
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.needs_shared
def test_bad_input(indexed: tuple[Path, Tree, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, tree, clinical = indexed
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    _fails(["--dicom", str(empty), "--clinical", str(clinical)], capsys, str(empty), out)
    _fails(["--dicom", str(tmp_path / "missing"), "--clinical", str(clinical)], capsys, "missing", out)
    no_ct = tmp_path / "no_ct"
    (no_ct / "a").mkdir(parents=True)
    shutil.copy(tree.seg[("HCC_001", "pre")], no_ct / "a" / "seg.dcm")
    (no_ct / "notes.txt").write_text("not DICOM")
    _fails(["--dicom", str(no_ct), "--clinical", str(clinical)], capsys, f"{no_ct}: no CT series", out)
    _fails(["--dicom", str(tree.root), "--clinical", str(tmp_path / "none.csv")], capsys, "none.csv", out)
    bad = tmp_path / "bad.csv"
    bad.write_text("TCIA_ID,OS\nHCC_001,1\n")
    _fails(["--dicom", str(tree.root), "--clinical", str(bad)], capsys, "missing required column", out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--dicom", str(tree.root), "--clinical", str(clinical), "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err

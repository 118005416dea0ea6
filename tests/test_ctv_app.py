"""CTV contouring app: the SDK graph end to end on generated studies, note sources, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from oncoplan.apps.ctv_contouring.app import CTVContouringApp
from oncoplan.apps.runner import run_app
from oncoplan.errors import InputError
from oncoplan.operators.clinical_note import find_note
from oncoplan.operators.input_check import check_input_folder
from oncoplan.rtstruct import read_rtstruct, sort_slices
from oncoplan.training.synth.cohort import generate_cohort

from .dicom_validate import dciodvfy_available, problems
from .helpers import cohort_rows, text_sr

pytestmark = pytest.mark.integration

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ctv_llmseg"
NOTE = "N1, breast conserving surgery, left side"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated breast study (DICOM CT only) with clinical.json beside it."""
    cohort = generate_cohort(
        "breast", tmp_path_factory.mktemp("ctvapp") / "c", 1, seed=41, size="small", progress=False
    )
    row = cohort_rows(cohort)[0]
    return cohort / row["image_dir"]


@pytest.fixture(scope="module")
def contoured(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app on eager PyTorch (the reference the exported runtimes are held to)."""
    out = tmp_path_factory.mktemp("ctvapp_out") / "out"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ONCOPLAN_BACKENDS", "torch")
        run_app(CTVContouringApp, study, out, BUNDLE)
    return out


def _ct(study: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(study.glob("*.dcm"))]


def _seg_mask(path: Path, ct: list[pydicom.Dataset]) -> np.ndarray:
    """The SEG's first segment as a boolean volume in the CT's slice order."""
    return (
        hd.seg.segread(path)
        .get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in sort_slices(ct)],
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[..., 0]
        .astype(bool)
    )


def test_app_writes_rtstruct_and_seg_that_agree(study: Path, contoured: Path) -> None:
    assert sorted(p.name for p in contoured.iterdir()) == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    ct = _ct(study)
    rs = pydicom.dcmread(contoured / "ctv_rtstruct.dcm")
    assert rs.StudyInstanceUID == ct[0].StudyInstanceUID
    assert "research use only" in rs.SeriesDescription.lower()
    series_ref = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == ct[0].SeriesInstanceUID
    contour_mask = read_rtstruct(contoured / "ctv_rtstruct.dcm", ct)["CTV"]

    seg = hd.seg.segread(contoured / "ctv_seg.dcm")
    assert "research use only" in seg.SeriesDescription.lower()
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    seg_mask = _seg_mask(contoured / "ctv_seg.dcm", ct)
    assert contour_mask.sum() > 0
    dice = 2 * (contour_mask & seg_mask).sum() / (contour_mask.sum() + seg_mask.sum())
    assert dice >= 0.98


def test_outputs_say_what_the_note_was_read_as(study: Path, contoured: Path) -> None:
    from oncoplan.ctv.note_reader import read_note

    note = json.loads((study.parent / "clinical.json").read_text())["note"]
    reading = read_note(note)
    sidecar = json.loads((contoured / "ctv_note.json").read_text())
    assert sidecar["interpretation"] == reading.interpretation and sidecar["model_note"] == reading.note
    assert sidecar["source"] == "clinical.json"
    rs = pydicom.dcmread(contoured / "ctv_rtstruct.dcm")
    assert f"interpreted as: {reading.interpretation}" in rs.StructureSetDescription
    assert rs.StructureSetROISequence[0].ROIDescription.startswith("interpreted as: ")
    assert reading.sides[0].side in rs.SeriesDescription
    seg = pydicom.dcmread(contoured / "ctv_seg.dcm")
    assert seg.ContentDescription.startswith("interpreted as: ")
    assert seg.SegmentSequence[0].SegmentDescription == seg.ContentDescription


def test_the_contour_sits_on_the_noted_side(study: Path, contoured: Path) -> None:
    note = json.loads((study.parent / "clinical.json").read_text())["note"]
    side = "left" if "left side" in note else "right"
    ct = _ct(study)
    mask = read_rtstruct(contoured / "ctv_rtstruct.dcm", ct)["CTV"]
    slices = sort_slices(ct)
    xs = []
    for k, ds in enumerate(slices):
        rows, cols = np.nonzero(mask[k])
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        x0 = float(ds.ImagePositionPatient[0])
        xs.extend(x0 + cols * float(ds.PixelSpacing[1]) * iop[0] + rows * float(ds.PixelSpacing[0]) * iop[3])
    # LPS: the patient's left is +x; the body is centred near x = 0 in the synthetic cohort.
    assert (np.median(xs) > 0) == (side == "left")


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_outputs_pass_dciodvfy(contoured: Path) -> None:
    dicom = sorted(contoured.glob("*.dcm"))  # ctv_note.json beside them is the interpretation sidecar
    assert [p.name for p in dicom] == ["ctv_rtstruct.dcm", "ctv_seg.dcm"]
    for p in dicom:
        assert problems(p) == [], p.name


def test_note_sources_in_documented_order(study: Path, tmp_path: Path) -> None:
    assert find_note(study, NOTE) == (NOTE, "the --note argument")
    note, where = find_note(study)
    assert where.endswith("clinical.json") and note == json.loads((study.parent / "clinical.json").read_text())["note"]
    bare = tmp_path / "bare"
    shutil.copytree(study, bare)
    with pytest.raises(InputError, match="no clinical note"):
        find_note(bare)
    with pytest.raises(InputError, match="no surgery found for the left side"):
        find_note(bare, "please contour the left breast")
    assert find_note(bare, "s/p L lumpectomy, pT1c pN1a (2/12 nodes positive)") == (NOTE, "the --note argument")
    sr = text_sr(_ct(study)[0], "N2, total mastectomy surgery, right side")
    sr.save_as(bare / "note_sr.dcm")
    assert find_note(bare) == ("N2, total mastectomy surgery, right side", str(bare / "note_sr.dcm"))


def _broken_copies(study: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input the app must refuse, with the words its error line must contain."""
    cases: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        dst = root / name
        shutil.copytree(study, dst)
        return dst

    files = sorted(study.glob("*.dcm"))
    empty = root / "empty"
    empty.mkdir(parents=True)
    cases["empty"] = (empty, "empty")
    d = root / "non_dicom"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    cases["non_dicom"] = (d, "no DICOM file")
    d = copy("truncated")
    data = (d / files[3].name).read_bytes()
    (d / files[3].name).write_bytes(data[: len(data) // 2])
    cases["truncated"] = (d, files[3].name)
    d = root / "no_ct"
    d.mkdir()
    ds = pydicom.dcmread(files[0])
    ds.Modality = "MR"
    ds.save_as(d / "mr.dcm")
    cases["no_ct"] = (d, "no CT series")
    d = copy("two_series")  # a second series no rule tells from the first (same slices, kernel, coverage)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(d / f"other_{f.name}")
    cases["two_series"] = (d, "2 candidate CT series that the selection rules cannot tell apart")
    d = root / "single"
    d.mkdir()
    shutil.copy(files[0], d / files[0].name)
    cases["single"] = (d, "single slice")
    d = copy("gap")
    (d / files[len(files) // 2].name).unlink()
    cases["gap"] = (d, "inconsistent slice spacing")
    d = copy("no_geometry")
    ds = pydicom.dcmread(d / files[2].name)
    del ds.ImagePositionPatient
    ds.save_as(d / files[2].name)
    cases["no_geometry"] = (d, "lacks ImagePositionPatient")
    return cases


def test_bad_inputs_fail_before_the_graph_with_one_line(study: Path, tmp_path: Path) -> None:
    for name, (folder, words) in _broken_copies(study, tmp_path / "bad").items():
        with pytest.raises(InputError) as err:
            check_input_folder(folder)
        assert words in str(err.value), name
        assert "\n" not in str(err.value), name


def test_cli_bad_input_and_bad_note_leave_nothing(study: Path, tmp_path: Path) -> None:
    truncated, _ = _broken_copies(study, tmp_path / "bad")["truncated"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan", "contour", "-i", str(truncated), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("oncoplan: error:")
    assert not out.exists() or list(out.iterdir()) == []
    # The note is checked before the graph starts: one line, nothing written.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "oncoplan.apps.ctv_contouring",
            "-i",
            str(study),
            "-o",
            str(out),
            "--note",
            "left please",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no surgery found for the left side" in r.stderr.strip().splitlines()[-1]
    assert "holoscan" not in r.stderr.lower()  # refused before the graph started
    assert list(out.iterdir()) == []


def _relabelled(study: Path, folder: Path, body_part: str, new_series: bool = False) -> Path:
    """A copy of the study's CT whose BodyPartExamined says `body_part` (as another series if `new_series`)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for path in sorted(study.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = body_part
        if new_series:
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / path.name)
    return folder


def test_a_ct_of_another_region_is_passed_over_or_refused(study: Path, tmp_path: Path) -> None:
    """The breast CTV model finds a "CTV" in an abdominal CT too: a series whose BodyPartExamined names a
    region without the breast is passed over for one that may hold it, and a study with none is refused:
    exit 2, one line naming the region, nothing written."""
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    from oncoplan.operators.series_selector import RuleSeriesSelectorOperator

    both = tmp_path / "both"
    shutil.copytree(study, both / "chest")
    _relabelled(study, both / "abdomen", "ABDOMEN", new_series=True)
    fragment = Fragment()
    studies = DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(both.absolute())
    selector = RuleSeriesSelectorOperator(fragment, organ="breast", name="selector")
    (selected,) = selector.filter(None, studies)
    (one,) = selected.selected_series
    assert str(one.series.SeriesInstanceUID) == str(_ct(study)[0].SeriesInstanceUID)

    abdomen = _relabelled(study, tmp_path / "abdomen", "Abdomen")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan", "contour", "-i", str(abdomen), "-o", str(out), "--note", NOTE]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error:") and "no CT of the breast: BodyPartExamined is ABDOMEN" in last, last
    assert not out.exists() or list(out.iterdir()) == []


def test_monai_deploy_exec_with_holoscan_variables(study: Path, contoured: Path, tmp_path: Path) -> None:
    """The card's command, paths from the HOLOSCAN_* variables as a MAP runner passes them; the U-Net
    on OpenVINO inside the Holoscan graph (each compute() on its own Python thread state: an OpenVINO
    object released with one crashed the process), marking the voxels eager PyTorch marks."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HOLOSCAN_INPUT_PATH": str(study),
        "HOLOSCAN_OUTPUT_PATH": str(out),
        "HOLOSCAN_MODEL_PATH": str(BUNDLE),
        "ONCOPLAN_BACKENDS": "openvino",
    }
    exe = Path(sys.executable).with_name("monai-deploy")
    r = subprocess.run([str(exe), "exec", "ctv_contouring"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "U-Net on openvino (CPU)" in r.stderr + r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    ct = _ct(study)
    eager, openvino = _seg_mask(contoured / "ctv_seg.dcm", ct), _seg_mask(out / "ctv_seg.dcm", ct)
    assert eager.sum() > 0 and np.count_nonzero(eager != openvino) <= 0.001 * eager.sum()
    bad = subprocess.run(
        [str(exe), "exec", "ctv_contouring"],
        capture_output=True,
        text=True,
        env={**env, "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "bad"), "ONCOPLAN_BACKENDS": "tensorflow"},
        check=False,
    )
    assert bad.returncode == 2 and "ONCOPLAN_BACKENDS: unknown backend(s) ['tensorflow']" in bad.stderr
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []
    bad = subprocess.run([str(exe), "exec", "no_such_app"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown app" in bad.stderr

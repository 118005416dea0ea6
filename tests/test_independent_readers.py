"""Our SEG and RTSTRUCT as independent tools read them (issue 31): dcmqi's segimage2itkimage and plastimatch
give the masks our own readers give, and every segment and ROI carries a display colour."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from oncoplan.apps.ctv_contouring.app import CTVContouringApp
from oncoplan.apps.runner import run_app
from oncoplan.rtstruct import read_rtstruct, sort_slices
from oncoplan.training.synth.cohort import generate_cohort

from .helpers import cohort_rows, read_series

pytestmark = pytest.mark.integration

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ctv_llmseg"
NOTE = "N1, breast conserving surgery, left side"
SEGIMAGE2ITKIMAGE = shutil.which("segimage2itkimage") or str(Path(sys.executable).with_name("segimage2itkimage"))


@pytest.fixture(scope="module")
def contoured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cohort = generate_cohort("breast", tmp_path_factory.mktemp("ind") / "c", 1, seed=7, size="small", progress=False)
    study = cohort / cohort_rows(cohort)[0]["image_dir"]
    out = tmp_path_factory.mktemp("ind_out") / "out"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ONCOPLAN_BACKENDS", "torch")
        run_app(CTVContouringApp, study, out, BUNDLE, note=NOTE)
    return study, out


def _on_ct_grid(path: Path, ct: sitk.Image) -> np.ndarray:
    """A mask image resampled (nearest) onto the CT grid, as a (slice, row, column) boolean array."""
    mask = sitk.ReadImage(str(path))
    same = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayFromImage(same) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _ours(study: Path, out: Path, ct_image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Our readers' RTSTRUCT and SEG masks in SimpleITK's (slice, row, column) order."""
    ct = sort_slices([pydicom.dcmread(p) for p in sorted(study.glob("*.dcm"))])
    rtstruct = read_rtstruct(out / "ctv_rtstruct.dcm", ct)["CTV"]  # ascending slice-normal order
    seg = (
        hd.seg.segread(out / "ctv_seg.dcm")
        .get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in ct],
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[..., 0]
        .astype(bool)
    )
    # SimpleITK's series reader orders slices by the same normal; flip when it runs the other way.
    first_z = float(np.asarray(ct[0].ImagePositionPatient, dtype=float) @ _normal(ct[0]))
    reader_z = float(np.asarray(ct_image.GetOrigin()) @ _normal(ct[0]))
    flip = abs(first_z - reader_z) > 1e-3
    return (rtstruct[::-1], seg[::-1]) if flip else (rtstruct, seg)


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


@pytest.mark.skipif(not Path(SEGIMAGE2ITKIMAGE).exists(), reason="dcmqi (segimage2itkimage) not installed")
def test_dcmqi_reads_our_seg_as_our_reader_does(contoured: tuple[Path, Path], tmp_path: Path) -> None:
    study, out = contoured
    cmd = [SEGIMAGE2ITKIMAGE, "--inputDICOM", str(out / "ctv_seg.dcm"), "--outputDirectory", str(tmp_path)]
    r = subprocess.run([*cmd, "--outputType", "nifti"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ct_image = read_series(study)
    (segment,) = sorted(tmp_path.glob("*.nii*"))
    theirs = _on_ct_grid(segment, ct_image)
    _, seg = _ours(study, out, ct_image)
    assert seg.sum() > 0 and _dice(theirs, seg) >= 0.999


@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")
def test_plastimatch_reads_our_rtstruct_as_our_reader_does(contoured: tuple[Path, Path], tmp_path: Path) -> None:
    study, out = contoured
    cmd = ["plastimatch", "convert", "--input", str(out / "ctv_rtstruct.dcm"), "--referenced-ct", str(study)]
    r = subprocess.run(
        [*cmd, "--output-prefix", str(tmp_path / "roi"), "--prefix-format", "nrrd"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ct_image = read_series(study)
    theirs = _on_ct_grid(tmp_path / "roi" / "CTV.nrrd", ct_image)
    rtstruct, _ = _ours(study, out, ct_image)
    assert rtstruct.sum() > 0 and _dice(theirs, rtstruct) >= 0.999


def test_every_segment_and_roi_has_a_display_colour(contoured: tuple[Path, Path]) -> None:
    _, out = contoured
    seg = pydicom.dcmread(out / "ctv_seg.dcm")
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in seg.SegmentSequence)
    rtstruct = pydicom.dcmread(out / "ctv_rtstruct.dcm")
    assert all(len(rc.ROIDisplayColor) == 3 for rc in rtstruct.ROIContourSequence)

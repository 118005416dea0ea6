"""The training data loaders read every transfer syntax a PACS sends (issue 31): a study in each compressed
syntax (and Implicit VR Little Endian) is read by the DICOM readers of the CTV datalists and the TACE
preprocessing exactly as the plain study is (the same voxels and geometry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from oncoplan.training.ctv.data import dicom_to_nifti
from oncoplan.training.dicom_series import read_ct_series
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.synth.pacs import transcode
from oncoplan.training.tace.preprocess import read_series

from .helpers import cohort_rows
from .pacs_matrix import SYNTAXES, ct_images, syntax_of, to_implicit_little_endian

TOOLS = {"jpeg-lossless-sv1": "dcmcjpeg", "jpeg-lossless": "dcmcjpeg", "jpeg-ls": "dcmcjpls", "rle": "dcmcrle"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cohort = generate_cohort("breast", tmp_path_factory.mktemp("dec") / "c", 1, seed=43, size="small", progress=False)
    return cohort / cohort_rows(cohort)[0]["image_dir"]


def _same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert a.GetPixelID() == b.GetPixelID()
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-6), get


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_the_training_loaders_read_a_study_in_each_transfer_syntax_as_the_plain_one(
    syntax: str, study: Path, tmp_path: Path
) -> None:
    if syntax in TOOLS and shutil.which(TOOLS[syntax]) is None:
        pytest.skip(f"{TOOLS[syntax]} (dcmtk) not installed")
    folder = shutil.copytree(study, tmp_path / syntax)
    files = ct_images(folder)
    to_implicit_little_endian(files) if syntax == "implicit-little-endian" else transcode(files, syntax)
    assert syntax_of(folder) != syntax_of(study)
    # The one reader under both: SimpleITK's GDCM series reader (its own JPEG, JPEG-LS, JPEG 2000, RLE codecs).
    (plain, plain_files), (image, image_files) = read_ct_series(study), read_ct_series(folder)
    _same_image(image, plain)
    assert [Path(f).name for f in image_files] == [Path(f).name for f in plain_files]
    # The CTV datalists' DICOM -> NIfTI cache, and the TACE preprocessing's HU image.
    a, b = dicom_to_nifti(folder, tmp_path / "a.nii.gz"), dicom_to_nifti(study, tmp_path / "b.nii.gz")
    _same_image(sitk.ReadImage(str(a)), sitk.ReadImage(str(b)))
    _same_image(read_series(folder), read_series(study))

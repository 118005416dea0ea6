"""TACE preprocessing (seed A.1): labels from NIfTI and DICOM-SEG, resampling, registration, filtering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from oncoplan.training.tace import preprocess as P
from oncoplan.training.tace.prepare import _labels, main


@pytest.fixture(scope="module")
def prepared(prepared_liver: Path) -> Path:
    return prepared_liver


def test_registration_improves_liver_overlap(prepared: Path) -> None:
    report = json.loads((prepared / "registration.json").read_text())
    assert report["cases"], "no phase was registered"
    for row in report["cases"]:
        # The synthetic post scan is shifted 3-10 mm and rotated <= 5 degrees against the pre scan.
        assert row["liver_dice_after"] > row["liver_dice_before"] + 0.02, row
        assert row["liver_dice_after"] > 0.94, row
    assert (
        "| PVP |" in (prepared / "registration.md").read_text()
        or "| AP |" in (prepared / "registration.md").read_text()
    )


def test_datalist_points_at_files_on_one_grid(prepared: Path) -> None:
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert len(datalist["data"]) == 2
    for entry in datalist["data"]:
        images = {
            k: sitk.ReadImage(str(prepared / entry[k])) for k in ("pre_image", "post_image", "pre_label", "post_label")
        }
        sizes = {img.GetSize() for img in images.values()}
        assert len(sizes) == 1, sizes
        assert np.allclose(images["pre_image"].GetSpacing(), (3.0, 3.0, 3.0))
        post = sitk.GetArrayFromImage(images["post_label"])
        assert set(np.unique(post)) <= {0, 1, 2, 3, 4}
        assert (post >= 2).sum() > 0, "the treated tumor is missing from the post label map"
        assert len(entry["protocol_multi_hot"]) == 18 and sum(entry["protocol_multi_hot"]) >= 2
        assert entry["os_weeks"] > 0 and entry["event"] in (0.0, 1.0)


def test_several_prepared_cohorts_form_one_datalist(prepared: Path, tmp_path: Path) -> None:
    from oncoplan.training.tace.data import load_prepared, segmentation_items

    second = tmp_path / "second"
    second.symlink_to(prepared, target_is_directory=True)
    one = load_prepared(prepared)
    both = load_prepared([prepared, second])
    assert len(both) == 2 * len(one)
    moved = [e["pre_image"].replace(str(prepared), str(second)) for e in one]
    assert [e["pre_image"] for e in both[len(one) :]] == moved
    assert len(segmentation_items([str(prepared), str(second)], ("pre", "post"))) == 4 * len(one)


def test_seg_and_nifti_labels_agree(liver_cohort: Path) -> None:
    row = pd.read_csv(liver_cohort / "cohort.csv").iloc[0]
    phase = "PVP" if isinstance(row["post_PVP_series"], str) else "AP"
    ct = P.read_series(liver_cohort / row[f"post_{phase}_series"])
    from_seg = sitk.GetArrayFromImage(_labels(row, "post", liver_cohort, ct, "seg"))
    from_nifti = sitk.GetArrayFromImage(_labels(row, "post", liver_cohort, ct, "nifti"))
    # The NIfTI map paints organs over each other; the SEG's liver segment keeps them: <0.5% differ.
    assert (from_seg == from_nifti).mean() > 0.995
    for value in (1, 2, 4):
        assert (from_seg == value).sum() > 0 and (from_nifti == value).sum() > 0


def test_resample_keeps_the_physical_extent() -> None:
    image = sitk.Image(40, 30, 10, sitk.sitkFloat32)
    image.SetSpacing((0.8, 0.8, 3.0))
    image.SetOrigin((-10.0, 5.0, 100.0))
    out = P.resample(image, (1.6, 1.6, 1.5))
    assert out.GetSize() == (20, 15, 20)
    assert out.GetOrigin() == image.GetOrigin()


def test_small_islands_are_removed() -> None:
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[2:18, 5:35, 5:35] = 1  # liver
    labels[8:12, 15:25, 15:25] = 2  # tumor, 400 voxels
    labels[0, 0, 0:5] = 1  # 5-voxel island outside
    labels[5, 6, 6] = 2  # one-voxel tumor speck inside the liver
    out = P.filter_label_map(labels)
    assert out[0, 0, 0:5].sum() == 0
    assert out[5, 6, 6] == 1  # the speck becomes liver, not tumor
    assert (out == 2).sum() == 400


def test_bad_cohort_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "cohort.csv").write_text("case,OS\nX,10\n")
    out = tmp_path / "out"
    assert main(["--cohort", str(cohort), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cohort.csv" in err and "TCIA_ID" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_island_rule_is_a_volume_not_a_voxel_count() -> None:
    """300 voxels of the A.1 grid (0.8 x 0.8 x 3.0 mm = 576 mm3) on any grid; a 3 mm grid keeps 22-voxel lesions."""
    assert P.min_voxels_at((0.8, 0.8, 3.0)) == 300
    assert P.min_voxels_at((3.0, 3.0, 3.0)) == 22
    assert P.min_voxels_at((1.0, 1.0, 1.0)) == 576
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:18, 2:18, 2:18] = P.LABELS["liver"]
    labels[5:8, 5:8, 5:8] = P.LABELS["viable"]  # 27 voxels: 0.73 cm3 at 3 mm, a real small lesion
    out = P.filter_label_map(labels, P.min_voxels_at((3.0, 3.0, 3.0)))
    assert (out == P.LABELS["viable"]).sum() == 27

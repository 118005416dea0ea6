"""CTV datalists from the synthetic cohort, from NIfTI + CSV (released-code layout), and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from oncoplan.errors import InputError
from oncoplan.training.ctv.data import build_datalist, label_on_image_grid


def test_synthetic_cohort_datalist_converts_dicom_once(breast_cohort: Path, tmp_path: Path) -> None:
    items = build_datalist(breast_cohort, tmp_path / "cache")
    rows = pd.read_csv(breast_cohort / "cohort.csv")
    assert [it["case_id"] for it in items] == list(rows["case_id"])
    assert [it["note"] for it in items] == list(rows["note"])
    first = Path(items[0]["image"])
    stamp = first.stat().st_mtime_ns
    again = build_datalist(breast_cohort, tmp_path / "cache")
    assert Path(again[0]["image"]).stat().st_mtime_ns == stamp  # cached, not rewritten


def test_converted_image_and_label_agree_in_world_space(breast_cohort: Path, tmp_path: Path) -> None:
    """The label NIfTI may store slices in another order than the DICOM-converted image:
    resampled onto the image grid, the CTV must sit where the CT is (inside the body)."""
    item = build_datalist(breast_cohort, tmp_path / "cache")[0]
    ctv = label_on_image_grid(item["label"], item["image"]) > 0
    ct = sitk.GetArrayFromImage(sitk.ReadImage(item["image"])).transpose(2, 1, 0)
    assert ctv.sum() > 0
    assert np.mean(ct[ctv] > -400) > 0.95  # CTV voxels are body tissue, not air


def test_nifti_csv_layout_with_tabular_note_fields(breast_cohort: Path, tmp_path: Path) -> None:
    items = build_datalist(breast_cohort, tmp_path / "cache")
    table = tmp_path / "notes.csv"
    rows = []
    for it in items:
        c = pd.read_csv(breast_cohort / "cohort.csv").set_index("case_id").loc[it["case_id"]]
        side = c["laterality"] if c["laterality"] != "both" else "left"
        rows.append(
            {
                "image": it["image"],
                "label": it["label"],
                "laterality": c["laterality"],
                "surgery": c[f"{side}_surgery"],
                "N stage": c[f"{side}_n_stage"],
            }
        )
    pd.DataFrame(rows).to_csv(table, index=False)
    from_csv = build_datalist(table)
    assert len(from_csv) == len(items)
    for a, b in zip(from_csv, items, strict=True):
        if "; " not in b["note"]:
            assert a["note"] == b["note"]
    half = build_datalist(table, fraction=0.5, seed=1)
    assert len(half) == round(0.5 * len(items)) and half == build_datalist(table, fraction=0.5, seed=1)


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a cohort folder"):
        build_datalist(tmp_path)
    table = tmp_path / "bad.csv"
    pd.DataFrame(
        [{"image": "missing.nii.gz", "label": "x.nii.gz", "note": "N0, breast conserving surgery, left side"}]
    ).to_csv(table, index=False)
    with pytest.raises(InputError, match=r"bad.csv:row 2: image file 'missing.nii.gz' not found"):
        build_datalist(table)


def test_counterfactual_pairs_share_the_image_and_change_note_and_truth(breast_cohort: Path, tmp_path: Path) -> None:
    plain = build_datalist(breast_cohort, tmp_path / "cache")
    expanded = build_datalist(breast_cohort, tmp_path / "cache", counterfactual=True)
    assert all("counterfactuals" not in it for it in plain + expanded)
    assert len(expanded) == 3 * len(plain)
    for case in plain:
        variants = [it for it in expanded if it["case_id"] == case["case_id"]]
        assert {it["image"] for it in variants} == {case["image"]}
        assert len({it["note"] for it in variants}) == 3
        assert len({it["label"] for it in variants}) == 3
    half = build_datalist(breast_cohort, tmp_path / "cache", fraction=0.5, seed=1, counterfactual=True)
    assert len(half) == 3 * len(build_datalist(breast_cohort, tmp_path / "cache", fraction=0.5, seed=1))


def _mask_on_slices(ct: list, label_path: Path) -> np.ndarray:
    """The label sampled at every pixel centre of the CT slices (RTSTRUCT order), in world space."""
    import nibabel as nib

    from oncoplan.rtstruct import SliceGeometry, sort_slices

    img = nib.load(label_path)
    data = np.asarray(img.dataobj) > 0
    inv = np.linalg.inv(img.affine)
    out = []
    for ds in sort_slices(ct):
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        lps = SliceGeometry.of(ds).to_world(np.stack([r.ravel(), c.ravel()], axis=1))
        ijk = np.rint((lps * [-1, -1, 1]) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < data.shape), axis=1)
        vals = np.zeros(len(ijk), dtype=bool)
        vals[ok] = data[tuple(ijk[ok].T)]
        out.append(vals.reshape(ds.Rows, ds.Columns))
    return np.stack(out)


def test_dicom_export_with_rtstruct_and_clinical_table(breast_cohort: Path, tmp_path: Path) -> None:
    import shutil

    import pydicom

    from oncoplan.rtstruct import ROI, rtstruct_dataset, write_rtstruct

    rows = pd.read_csv(breast_cohort / "cohort.csv", dtype=str, keep_default_na=False)
    export = tmp_path / "export"
    for r in rows.to_dict("records"):
        case = export / r["case_id"]
        shutil.copytree(breast_cohort / r["image_dir"], case / "CT")
        ct = [pydicom.dcmread(f) for f in sorted((case / "CT").glob("*.dcm"))]
        ctv = _mask_on_slices(ct, breast_cohort / r["ctv"])
        body = np.zeros_like(ctv)
        body[:, 2:-2, 2:-2] = True
        rois = [ROI("CTV_Breast", ctv), ROI("External", body, interpreted_type="EXTERNAL")]
        write_rtstruct(rtstruct_dataset(ct, rois), case / "RS.dcm")
    table = tmp_path / "clinical.csv"
    rows[["case_id", "laterality", "note"]].to_csv(table, index=False)

    items = build_datalist(export, tmp_path / "cache", clinical=str(table), roi="ctv")
    assert [it["note"] for it in items] == list(rows["note"])
    for it, r in zip(items, rows.to_dict("records"), strict=True):
        got = label_on_image_grid(it["label"], it["image"]) > 0
        truth = label_on_image_grid(str(breast_cohort / r["ctv"]), it["image"]) > 0
        assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) >= 0.98
    with pytest.raises(InputError, match="matches"):
        build_datalist(export, tmp_path / "cache2", clinical=str(table), roi="heart")


def test_free_text_fraction_paraphrases_a_seeded_share_of_notes_with_the_same_fields_and_truth(
    breast_cohort: Path, tmp_path: Path
) -> None:
    """Issue 36: `free_text_fraction` trains the text path on generated free-text paraphrases; each says the
    same side, surgery and N stage as the Table 5 note it replaces (so the truth is unchanged), the draw is
    deterministic in the seed, and 0 (the default) leaves the shipped recipe's datalist as it was."""
    from oncoplan.ctv.note_reader import read_note

    def datalist(fraction: float, seed: int = 0) -> list[dict]:
        return build_datalist(
            breast_cohort, tmp_path / "cache", seed=seed, counterfactual=True, free_text_fraction=fraction
        )

    template = build_datalist(breast_cohort, tmp_path / "cache", counterfactual=True)
    assert datalist(0.0) == template
    every = datalist(1.0)
    assert len(every) == len(template)
    for free, plain in zip(every, template, strict=True):
        assert free["note_form"] == "free_text" and free["template_note"] == plain["note"]
        assert free["note"] != plain["note"]
        assert (free["image"], free["label"], free["variant"]) == (plain["image"], plain["label"], plain["variant"])
        assert read_note(free["note"]).note == plain["note"]  # the same fields, paraphrased
    assert every == datalist(1.0) and every != datalist(1.0, seed=1)
    some, more = datalist(0.3), datalist(0.6)
    chosen = [{i for i, it in enumerate(d) if it["note_form"] == "free_text"} for d in (some, more)]
    assert chosen[0] <= chosen[1] and 0 < len(chosen[1]) < len(template)
    for it in some:
        assert (it["note"] == it["template_note"]) == (it["note_form"] == "template")
    with pytest.raises(InputError, match="free_text_fraction"):
        datalist(1.5)


def test_train_config_keeps_the_shipped_recipe_unless_free_text_or_init_weights_are_passed(
    breast_cohort: Path, tmp_path: Path
) -> None:
    """configs/train.json: `free_text_fraction` 0 and `init_ckpt` null by default (the shipped weights'
    recipe reproduces); passed, the training datalist is paraphrased and the network starts from the weights."""
    import torch

    from oncoplan.runtime.bundles import bundle_parser, checkpoint_state, shipped_bundles

    bundle = shipped_bundles() / "ctv_llmseg"
    paths = {"train_source": str(breast_cohort), "cache_dir": str(tmp_path / "cache")}
    default = bundle_parser(bundle, "train.json", paths)
    assert default["free_text_fraction"] == 0 and default["init_ckpt"] is None
    assert all("note_form" not in it for it in default.get_parsed_content("train#datalist"))
    free = bundle_parser(bundle, "train.json", paths | {"free_text_fraction": 1.0})
    assert {it["note_form"] for it in free.get_parsed_content("train#datalist")} == {"free_text"}
    ckpt = bundle / "models" / "model.pt"
    tuned = bundle_parser(bundle, "train.json", {"init_ckpt": str(ckpt)}).get_parsed_content("network_init")
    state = checkpoint_state(ckpt)
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in state.items())

"""One synthetic breast RT case on disk: DICOM CT, NIfTI + DICOM-SEG ground truth, clinical.json."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes

from oncoplan.training.synth import breast as B
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets, stable_uid, write_datasets
from oncoplan.training.synth.labels import ANATOMY, CTV_CODE, SegmentSpec, save_label_map, save_nifti, write_seg
from oncoplan.training.synth.scan import sample_grid

_SEG_TYPES = {
    "body": codes.DCM.ExternalBodyModel,
    "lung_left": codes.SCT.Lung,
    "lung_right": codes.SCT.Lung,
    "heart": codes.SCT.Heart,
    "spine": codes.SCT.Spine,
    "sternum": codes.SCT.Sternum,
    "breast_left": codes.SCT.LeftBreast,
    "breast_right": codes.SCT.RightBreast,
    "axilla_left": codes.SCT.AxillaryLymphNode,
    "axilla_right": codes.SCT.AxillaryLymphNode,
    "supraclavicular_left": codes.SCT.SupraclavicularLymphNode,
    "supraclavicular_right": codes.SCT.SupraclavicularLymphNode,
    "internal_mammary_left": codes.SCT.ParasternalLymphNode,
    "internal_mammary_right": codes.SCT.ParasternalLymphNode,
}


def write_case(root: Path, index: int, seed: int, site_name: str, size: str) -> dict[str, object]:
    """Generate case `index` of a cohort into root/<case_id>/ and return its cohort.csv row."""
    rng = np.random.default_rng([seed, index, 1])
    site = B.SITES[site_name]
    case_id = f"BRST_{site_name[:3].upper()}_{index + 1:04d}"
    record = B.sample_record(case_id, site, rng)
    anatomy = B.sample_anatomy(record, rng)
    grid = sample_grid(rng, 2 * (anatomy.half_width + 45), 60.0, -230.0, site.slice_thickness, size)
    masks = B.structure_masks(anatomy, grid)
    hu = B.render_ct(masks, grid, site, rng)
    ctv = B.ctv_mask(anatomy, record, grid)

    case_dir = root / case_id
    uid = lambda *p: stable_uid(seed, site_name, index, *p)  # noqa: E731
    scan_day = date(2020, 1, 1) + timedelta(days=int(rng.integers(0, 1500)))
    patient = Patient(case_id, f"SYNTHETIC^{case_id}", f"{scan_day.year - record.age}0101", "F", record.age)
    study = Study(uid("study"), scan_day.strftime("%Y%m%d"), "093000", f"A{index + 1:06d}", "1", "RT SIMULATION CHEST")
    series = Series(
        uid("series"),
        2,
        "RT SIM CHEST 3D",
        uid("for"),
        "CHEST",
        None,
        manufacturer=site.manufacturer,
        model=site.model,
        kernel=site.kernel,
    )
    ct = ct_datasets(hu, grid, patient, study, series)
    write_datasets(ct, case_dir / "dicom")

    labels = case_dir / "labels"
    labels.mkdir(parents=True)
    save_nifti(ctv.astype(np.uint8), grid, labels / "ctv.nii.gz")
    save_label_map(masks, B.LABELS, grid, labels / "structures.nii.gz")
    specs = [SegmentSpec("CTV", codes.SCT.Tissue, CTV_CODE)] + [
        SegmentSpec(n, ANATOMY, _SEG_TYPES[n]) for n in B.LABELS
    ]
    write_seg([ctv] + [masks[n] for n in B.LABELS], specs, ct, labels / "seg.dcm", 300, "Ground truth CTV")

    note = B.clinical_note(record)
    # Counterfactual truth: the same anatomy under the swapped-laterality and toggled-nodal
    # records, so text guidance can be trained and scored against exact targets.
    counterfactual = {}
    for kind, cf in (("laterality", record.with_laterality_swapped()), ("nodal", record.with_nodes_toggled())):
        save_nifti(B.ctv_mask(anatomy, cf, grid).astype(np.uint8), grid, labels / f"ctv_{kind}.nii.gz")
        counterfactual[kind] = {"note": B.clinical_note(cf), "ctv": f"labels/ctv_{kind}.nii.gz"}
    (labels / "counterfactual.json").write_text(json.dumps(counterfactual, indent=1))
    by_side = {s.side: s for s in record.sides}
    clinical = {
        "case_id": case_id,
        "note": note,
        "age": record.age,
        "laterality": record.laterality,
        "sides": [s.__dict__ | {"target": s.target} for s in record.sides],
        "chemotherapy": record.chemotherapy,
        "synthetic": True,
    }
    (case_dir / "clinical.json").write_text(json.dumps(clinical, indent=1))
    row: dict[str, object] = {
        "case_id": case_id,
        "site": site_name,
        "age": record.age,
        "laterality": record.laterality,
        "note": note,
        "target": "; ".join(s.target for s in record.sides),
        "chemotherapy": record.chemotherapy,
        "seroma": int(record.seroma),
        "clips": int(record.clips),
    }
    for side in B.SIDES:
        s = by_side.get(side)
        row[f"{side}_surgery"] = s.surgery if s else ""
        row[f"{side}_n_stage"] = s.n_stage if s else ""
        row[f"{side}_t_stage"] = s.t_stage if s else ""
    row |= {
        "patient_position": grid.patient_position,
        "rows": grid.rows,
        "cols": grid.cols,
        "slices": grid.slices,
        "pixel_spacing_mm": grid.row_spacing,
        "slice_thickness_mm": grid.slice_spacing,
        "image_dir": f"{case_id}/dicom",
        "ctv": f"{case_id}/labels/ctv.nii.gz",
        "structures": f"{case_id}/labels/structures.nii.gz",
        "seg": f"{case_id}/labels/seg.dcm",
    }
    return row

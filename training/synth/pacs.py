"""Studies shaped like what a PACS or a CD export sends, made from a generated study.

A planning CT rarely arrives alone: the scanner's topogram, a second reconstruction of the same
acquisition, a coronal reformat, a dose screen capture and a dose SR come with it, sometimes
compressed, sometimes laid out as a CD export (DICOMDIR, nested folders, files without extension,
files a viewer leaves behind). The apps must pick the planning series from all of this
(operators/series_rules.py); these studies are how the tests and the demo show they do.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from oncoplan.errors import InputError


def stable_uid(*parts: object) -> str:
    """A UID derived from its parts (pydicom's root: generate_uid ignores entropy_srcs when prefix is None)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


EXTRAS = ("topogram", "thick_recon", "coronal_mpr", "dose_screen", "dose_sr")
# Transfer syntaxes a PACS sends and the command that writes each: dcmtk (what ./run installs), except JPEG
# 2000, which dcmtk cannot encode: python-gdcm (BSD-3; its wheel bundles OpenJPEG, BSD-2), already our decoder.
GDCM = "python-gdcm"
TRANSFER_SYNTAXES: dict[str, list[str]] = {
    "jpeg-lossless-sv1": ["dcmcjpeg", "--encode-lossless-sv1"],  # 1.2.840.10008.1.2.4.70, the PACS favourite
    "jpeg-lossless": ["dcmcjpeg", "--encode-lossless"],  # 1.2.840.10008.1.2.4.57
    "jpeg-ls": ["dcmcjpls", "--encode-lossless"],  # 1.2.840.10008.1.2.4.80
    "rle": ["dcmcrle"],  # 1.2.840.10008.1.2.5
    "jpeg2000": [GDCM],  # 1.2.840.10008.1.2.4.90 (JPEG 2000 lossless only)
}


def _sorted_ct(files: Iterable[Path]) -> list[Dataset]:
    datasets = [pydicom.dcmread(f) for f in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def _new(base: Dataset, series: str, number: int, description: str, k: int) -> Dataset:
    ds = copy.deepcopy(base)
    ds.SeriesInstanceUID = stable_uid(base.SeriesInstanceUID, series)
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SOPInstanceUID = stable_uid(base.SeriesInstanceUID, series, k)
    ds.InstanceNumber = k + 1
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("SliceLocation", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _plane(ds: Dataset, pixels: np.ndarray, position: np.ndarray, iop: np.ndarray, spacing: tuple) -> Dataset:
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
    ds.PixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
    return ds


def pacs_series(ct_files: Iterable[Path], extras: Iterable[str] = EXTRAS) -> dict[str, list[Dataset]]:
    """The extra series of a PACS study around the CT series in `ct_files` (name -> datasets)."""
    cts = _sorted_ct(ct_files)
    first = cts[0]
    volume = np.stack([ds.pixel_array for ds in cts])  # stored values (slice, row, column), ascending normal
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in cts])
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    gap = float(np.linalg.norm(positions[1] - positions[0]))
    top = positions[-1]  # the coronal images run from the last (highest) slice down
    coronal_iop = np.concatenate([iop[:3], -normal])
    out: dict[str, list[Dataset]] = {}
    for name in extras:
        if name == "topogram":  # one coronal projection image, acquired before the scan
            ds = _new(first, name, 1, "Topogram 0.6 T20f", 0)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.AcquisitionTime = "000001"
            projection = volume.mean(axis=1)[::-1]
            out[name] = [_plane(ds, projection, top, coronal_iop, (gap, col_mm))]
            ds.SliceThickness = ""  # Type 2: a projection has none
            for keyword in ("SpacingBetweenSlices", "RescaleType"):
                delattr(ds, keyword)
        elif name == "thick_recon":  # the same acquisition, slices twice as thick (pairs averaged)
            thick = []
            for k in range(len(cts) // 2):
                ds = _new(first, name, int(first.SeriesNumber) + 100, f"{first.SeriesDescription} {2 * gap:g}mm", k)
                ds.SliceThickness = ds.SpacingBetweenSlices = f"{2 * gap:.6g}"
                pixels = np.rint(volume[2 * k : 2 * k + 2].mean(axis=0))
                thick.append(_plane(ds, pixels, positions[2 * k : 2 * k + 2].mean(axis=0), iop, (row_mm, col_mm)))
            out[name] = thick
        elif name == "coronal_mpr":  # a reformat: every 8th row of the volume as a coronal image
            mpr = []
            for j, r in enumerate(range(0, volume.shape[1], 8)):
                ds = _new(first, name, int(first.SeriesNumber) + 200, "COR MPR", j)
                ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]  # as GE writes it (no defined term: a warning)
                position = top + r * row_mm * iop[3:]
                mpr.append(_plane(ds, volume[::-1, r, :], position, coronal_iop, (gap, col_mm)))
            out[name] = mpr
        elif name == "dose_screen":
            out[name] = [_dose_screen(first)]
        elif name == "dose_sr":
            out[name] = [_dose_sr(first)]
        else:
            raise ValueError(f"unknown extra series {name!r}; choose from {', '.join(EXTRAS)}")
    return out


_SC_KEEP = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientIdentityRemoved", "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "Modality", "SeriesInstanceUID",
    "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "OperatorsName", "Manufacturer",
    "ManufacturerModelName", "InstitutionName", "SoftwareVersions", "SOPInstanceUID", "InstanceNumber",
    "ContentDate", "ContentTime", "ImageComments",
)  # fmt: skip


def _dose_screen(ct: Dataset) -> Dataset:
    """The scanner's dose page as a Secondary Capture with Modality CT, as GE and Siemens send it."""
    full = _new(ct, "dose_screen", 999, "Dose Report", 0)
    ds = Dataset()  # only the Secondary Capture IOD's modules: copied patient, study, series, equipment
    ds.file_meta = full.file_meta
    for keyword in _SC_KEEP:
        if keyword in full:
            setattr(ds, keyword, full.data_element(keyword).value)
    ds.PatientOrientation = ""
    ds.BodyPartExamined = full.get("BodyPartExamined", "") or "CHEST"  # unpaired: no Laterality needed
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows = ds.Columns = 64
    page = np.zeros((64, 64, 3), np.uint8)
    page[8:56:8, 4:60] = 255  # lines of "text"
    ds.PixelData = page.tobytes()
    return ds


def _dose_sr(ct: Dataset) -> Dataset:
    """A radiation dose SR (Modality SR) with the CT's study, as scanners send one per exam."""
    import highdicom as hd

    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("113701", "DCM", "X-Ray Radiation Dose Report"))
    root.ContentSequence = [
        hd.sr.TextContentItem(
            name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
            value="CTDIvol 8.1 mGy, DLP 312 mGy.cm (synthetic)",
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=[ct],
        content=root,
        series_instance_uid=stable_uid(ct.SeriesInstanceUID, "dose_sr"),
        series_number=998,
        sop_instance_uid=stable_uid(ct.SeriesInstanceUID, "dose_sr", 0),
        instance_number=1,
        manufacturer=str(ct.get("Manufacturer", "")),
        series_description="Dose Report SR",
    )
    return sr


def write_pacs_series(ct_files: Iterable[Path], folder: Path, extras: Iterable[str] = EXTRAS) -> list[Path]:
    """Write the extra series into `folder`/<name>/ (the study folder the CT series sits in)."""
    written = []
    for name, datasets in pacs_series(ct_files, extras).items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            path = folder / name / f"IM{int(ds.InstanceNumber):04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def check_transfer_syntax(syntax: str) -> None:
    """InputError (one line) unless `syntax` is known and the tool that writes it is installed."""
    if syntax not in TRANSFER_SYNTAXES:
        raise InputError(f"unknown --transfer-syntax {syntax!r}; choose {', '.join(TRANSFER_SYNTAXES)}")
    tool = TRANSFER_SYNTAXES[syntax][0]
    if tool == GDCM:
        try:
            import gdcm  # noqa: F401
        except ImportError:
            raise InputError(f"--transfer-syntax {syntax} needs {GDCM} (pip install -e .)") from None
    elif shutil.which(tool) is None:
        raise InputError(f"--transfer-syntax {syntax} needs {tool} (dcmtk); ./run setup installs it")


def transcode(files: Iterable[Path], syntax: str) -> None:
    """Re-encode DICOM files in place in a compressed transfer syntax (dcmtk, or GDCM for JPEG 2000); an
    encoder that fails is InputError, one line naming the file."""
    check_transfer_syntax(syntax)
    command = TRANSFER_SYNTAXES[syntax]
    for path in files:
        tmp = path.with_name(path.name + ".tmp")
        try:
            if command[0] == GDCM:
                _jpeg2000(path, tmp)
            else:
                done = subprocess.run([*command, str(path), str(tmp)], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    said = (done.stderr or done.stdout).strip().splitlines()
                    why = said[-1] if said else f"exit status {done.returncode}"
                    raise InputError(f"{path}: {command[0]} could not write {syntax}: {why}")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def _jpeg2000(path: Path, out: Path) -> None:
    """JPEG 2000 lossless (1.2.840.10008.1.2.4.90) by GDCM. Only GDCM's compressed pixel data is kept: every
    other attribute stays as written (GDCM's writer would add RescaleType US to a CT in HU)."""
    import gdcm
    from pydicom.uid import JPEG2000Lossless

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEG2000Lossless))
    if not reader.Read():
        raise InputError(f"{path}: GDCM cannot read it to write jpeg2000")
    change.SetInput(reader.GetImage())
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    if not change.Change():
        raise InputError(f"{path}: GDCM could not encode jpeg2000")
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise InputError(f"{out}: GDCM could not write it")
    ds = pydicom.dcmread(path)
    before = ds.pixel_array
    ds.PixelData = pydicom.dcmread(out).PixelData  # encapsulated: basic offset table and one fragment per frame
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(out, enforce_file_format=True)
    if not np.array_equal(pydicom.dcmread(out).pixel_array, before):  # lossless, or nothing
        raise InputError(f"{path}: GDCM's jpeg2000 did not decode to the same pixels")


def cd_layout(study: Path, out: Path) -> Path:
    """The study as a CD export: DICOMDIR, nested numbered folders, files without extension, viewer leftovers."""
    files = sorted(p for p in study.rglob("*") if p.is_file() and p.suffix == ".dcm")
    for i, path in enumerate(files):
        target = out / "DICOM" / f"S{i // 50:04d}" / f"I{i:07d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if shutil.which("dcmmkdir"):  # dcmtk's DICOMDIR writer (general-purpose profile)
        cmd = ["dcmmkdir", "--general-purpose", "--recurse", "--invent", "DICOM"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    return viewer_leftovers(out)


def viewer_leftovers(out: Path) -> Path:
    """Files that are not DICOM, as viewers and operating systems leave them beside a study."""
    (out / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (out / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (out / "VIEWER.EXE").write_bytes(b"MZ\x90\x00 a DICOM viewer for Windows")
    (out / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER.EXE\n")
    (out / "README.TXT").write_text("Images of one patient. Open with VIEWER.EXE.\n")
    return out


def pacs_shape_cohort(cohort: Path, kind: str, transfer_syntax: str | None = None, extras=EXTRAS) -> None:
    """`synth ... --pacs`: each case's planning study gets the extra series (beside its planning CT, in the
    study folder) and, with `transfer_syntax`, its CT images compressed. Breast: the planning CT; liver: the
    pre-treatment study around its portal-venous (else arterial) series. For the apps and the demo: the
    training loaders read one series per folder and want the plain cohort. `synth` and the demo run it on the
    scratch cohort (generate_cohort's `finish`), so a failure part-way leaves no cohort at all."""
    import csv

    if transfer_syntax:
        check_transfer_syntax(transfer_syntax)
    with open(Path(cohort) / "cohort.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if kind == "breast":
            ct_dir = study_dir = Path(cohort) / row["image_dir"]
        else:
            ct_dir = Path(cohort) / (row.get("pre_PVP_series") or row["pre_AP_series"])
            study_dir = ct_dir.parent
        if extras:
            write_pacs_series(sorted(ct_dir.glob("*.dcm")), study_dir, extras)
        if transfer_syntax:
            images = [p for p in study_dir.rglob("*.dcm") if _is_ct_image(p)]
            try:
                transcode(images, transfer_syntax)
            except InputError as exc:  # name the file within the cohort, not in its scratch folder
                raise InputError(str(exc).replace(f"{Path(cohort)}/", "")) from None


def _is_ct_image(path: Path) -> bool:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.2"

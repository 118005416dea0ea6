"""The conformance matrix of issue 31: each way a PACS or a CD sends a study, made from one plain study.

A variant changes one thing of the plain study folder (the one the app would be given in a clean world):
its layout, its transfer syntax, or one extra series kind beside the planning series. Both apps' matrix tests
run every variant and require the plain study's outputs; each variant is a copy, so one generated study serves
them all.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from oncoplan.training.synth.pacs import EXTRAS, TRANSFER_SYNTAXES, cd_layout, transcode, viewer_leftovers
from oncoplan.training.synth.pacs import write_pacs_series as _write_pacs_series

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
LAYOUTS = ("cd_export", "several_studies", "stray_files")
# The plain study is Explicit VR Little Endian (asserted by the tests); Implicit VR Little Endian is the
# default every DICOM association supports, so PACS send it too; then each compressed syntax.
SYNTAXES = ("implicit-little-endian", *TRANSFER_SYNTAXES)
VARIANTS = [f"layout:{x}" for x in LAYOUTS] + [f"syntax:{x}" for x in SYNTAXES] + [f"extra:{x}" for x in EXTRAS]
_DCMTK = {"dcmcjpeg", "dcmcjpls", "dcmcrle"}


def variant_params() -> list:
    """VARIANTS as pytest parameters: those dcmtk writes are skipped where it is not installed."""
    out = []
    for v in VARIANTS:
        tool = TRANSFER_SYNTAXES.get(v.split(":")[1], [""])[0] if v.startswith("syntax:") else ""
        missing = tool in _DCMTK and shutil.which(tool) is None
        out.append(pytest.param(v, id=v.replace(":", "-"), marks=pytest.mark.skipif(missing, reason=f"no {tool}")))
    return out


def ct_images(folder: Path) -> list[Path]:
    """The CT image files (CT Image Storage) under `folder`, any depth."""
    out = []
    for p in sorted(folder.rglob("*.dcm")):
        if str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID) == CT_IMAGE:
            out.append(p)
    return out


def syntax_of(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in ct_images(folder)}


def to_implicit_little_endian(files: list[Path]) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, path
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)


def make_variant(
    variant: str, plain: Path, planning: Path, dest: Path, several_studies: Callable[[Path], Path]
) -> Path:
    """The input folder of `variant` under `dest`. `plain`: the plain study folder; `planning`: its planning
    series' folder (the extras go beside it); `several_studies(dest)`: the plain study with another study
    of the patient, in one folder (breast: an older diagnostic CT; liver: the post-treatment study)."""
    what, name = variant.split(":")
    if what == "layout" and name == "cd_export":  # DICOMDIR, nested folders, no extensions, viewer leftovers
        return cd_layout(plain, dest)
    if what == "layout" and name == "several_studies":
        return several_studies(dest)
    folder = shutil.copytree(plain, dest)
    if what == "layout" and name == "stray_files":
        viewer_leftovers(folder)
        (folder / "IHE_PDI").mkdir()  # and in a folder of their own, and beside the planning series' slices
        viewer_leftovers(folder / "IHE_PDI")
        (folder / planning.relative_to(plain) / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    elif what == "syntax":
        files = ct_images(folder)
        to_implicit_little_endian(files) if name == "implicit-little-endian" else transcode(files, name)
    elif what == "extra":
        _write_pacs_series(sorted((folder / planning.relative_to(plain)).glob("*.dcm")), folder, [name])
    else:
        raise ValueError(variant)
    return folder

"""The input folder, checked before a graph starts: each problem is one line naming the file.

A PACS or a CD export sends more than the series an app works on: DICOMDIR, nested folders, files
without extension, other series and objects, and files a viewer leaves behind (thumbs.db,
.DS_Store, the viewer itself). Non-DICOM files are skipped with a log line; every DICOM file must be
complete; the series rules (series_rules.py) choose the series as the app's selector will; every
slice of the chosen series and one slice of every other candidate series are decoded, so a transfer
syntax no installed decoder reads, or one corrupt slice, is one line naming the file before the graph
starts, never a traceback inside it (decoding the demo's full-size study twice: BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from oncoplan.errors import InputError
from oncoplan.operators.series_rules import Choice, SeriesInfo, choose, passed_over

log = logging.getLogger(__name__)
IGNORED = {"clinical.json", "DICOMDIR"}  # side files an input folder may carry


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * (int(ds.BitsAllocated) // 8) * frames


def check_dicom_file(path: Path) -> pydicom.Dataset:
    """A readable, complete DICOM file (header and, for images, all pixel bytes)."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file") from None
    except Exception as exc:  # truncated or corrupt: pydicom raises many types
        raise InputError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if "SOPClassUID" not in ds:
        raise InputError(f"{path}: DICOM file without SOPClassUID")
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if "PixelData" in ds and not encapsulated and len(ds.PixelData) < (want := _expected_pixel_bytes(ds)):
        raise InputError(f"{path}: truncated pixel data ({len(ds.PixelData)} of {want} bytes)")
    return ds


def check_decodable(ds: pydicom.Dataset, path: Path | str) -> None:
    """Decode the pixel data once (not kept): InputError naming the file, its transfer syntax and what the
    decoder said if it cannot (no decoder for the syntax, a corrupt codestream). File descriptor 2 is left
    alone: redirecting it while other threads run (the warm worker) would swallow their output."""
    try:
        pixel_array(ds)
        return
    except Exception as exc:  # missing plugin, corrupt codestream: pydicom raises many types
        error = exc
    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = f"{syntax.name} ({syntax})" if syntax else "no transfer syntax"
    # pydicom's words and each plugin's, on one line
    reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    raise InputError(f"{path}: cannot decode its pixel data, transfer syntax {name}: {reason}")


def dicom_files(folder: Path) -> dict[Path, pydicom.Dataset]:
    """Every DICOM file under `folder` (any nesting, any name), checked; other files skipped with a log line."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in IGNORED):
        try:
            out[path] = check_dicom_file(path)
        except InputError as exc:
            if not str(exc).endswith("not a DICOM file"):
                raise
            log.info("skipped %s: not a DICOM file", path.relative_to(folder))
    return out


def check_input_folder(folder: str | Path, organ: str = "breast", series: str | None = None) -> Choice:
    """The folder holds complete DICOM and a decodable series the `organ` app's rules choose (or `series`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder does not exist")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise InputError(f"{folder}: input folder is empty")
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM file in the input folder")
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path, ds in files.items():
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    infos = {uid: SeriesInfo.of([ds for _, ds in items]) for uid, items in by_series.items()}
    try:
        choice = choose(list(infos.values()), organ, series)
    except InputError as exc:
        raise InputError(f"{folder}: {str(exc).removeprefix('input: ')}") from None
    for path, ds in by_series[choice.series.uid]:  # every slice the graph will decode
        check_decodable(ds, path)
    for uid, info in infos.items():  # and one of every other candidate (a --series run may name it)
        if uid != choice.series.uid and not passed_over(info, organ):
            check_decodable(by_series[uid][0][1], by_series[uid][0][0])
    return choice

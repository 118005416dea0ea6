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
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from oncoplan.errors import InputError
from oncoplan.operators.series_rules import Choice, SeriesInfo, choose, passed_over, series_override

log = logging.getLogger(__name__)
IGNORED = {"clinical.json", "DICOMDIR"}  # side files an input folder may carry


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * (int(ds.BitsAllocated) // 8) * frames


def _bare_dataset(path: Path) -> bool:
    """Whether a file pydicom refuses as DICOM is a DICOM data set without its file header (no 128-byte
    preamble, 'DICM' or file meta information: ACR-NEMA style, some old archives and scripts write them)."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return all(str(ds.get(k, "")).replace(".", "").isdigit() for k in ("SOPClassUID", "SOPInstanceUID"))
    except Exception:  # anything else (a thumbnail cache, an executable) is simply not DICOM
        return False


def _header_reads(path: Path) -> bool:
    """Whether the attributes before the pixel data read, with a SOPClassUID among them."""
    try:
        return "SOPClassUID" in pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # unreadable before the pixel data too
        return False


def check_dicom_file(path: Path) -> pydicom.Dataset:
    """A readable, complete DICOM file (header and, for images, all pixel bytes)."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if _bare_dataset(path):  # DICOM content the SDK's loader would skip: refused, not silently left out
            raise InputError(
                f"{path}: a DICOM data set without the DICOM file header (no preamble, 'DICM' or file meta "
                "information), which the apps do not read; re-write it as a DICOM file (e.g. dcmtk's dcmconv IN OUT)"
            ) from None
        raise InputError(f"{path}: not a DICOM file") from None
    except Exception as exc:  # truncated or corrupt: pydicom raises many types
        raise InputError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if "SOPClassUID" not in ds:
        if _header_reads(path):  # pydicom gives an empty data set for a file cut inside encapsulated pixel data
            raise InputError(f"{path}: its pixel data cannot be read: the file ends inside it (truncated) or is bad")
        raise InputError(f"{path}: DICOM file without SOPClassUID")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise InputError(
            f"{path}: DICOM file whose file meta information names no transfer syntax (0002,0010); "
            "re-write it as a DICOM file (e.g. dcmtk's dcmconv IN OUT)"
        )
    # Type 1 in every object: the SDK's loader leaves a file without them out, silently (a slice fewer).
    if missing := [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]:
        raise InputError(f"{path}: DICOM file without {', '.join(missing)}")
    if "PixelData" in ds and not syntax.is_encapsulated:
        try:
            want = _expected_pixel_bytes(ds)
        except (AttributeError, TypeError, ValueError):
            absent = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
            raise InputError(
                f"{path}: image pixel description {'without ' + ', '.join(absent) if absent else 'malformed'}"
            ) from None
        if len(ds.PixelData) < want:
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
    if not series_override(series):  # a named series is checked whole by choose
        for uid, info in infos.items():
            _no_duplicate_slices(info, by_series[uid], organ)
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


def _no_duplicate_slices(info: SeriesInfo, items: list[tuple[Path, pydicom.Dataset]], organ: str) -> None:
    """A series the rules would otherwise consider holding two slices at one position (the same instance twice,
    or two instances there) is refused, naming both files. Passing it over instead would part the input check
    from the graph: the SDK's loader keeps one slice per position, so the app's selector would see it whole."""
    reason = passed_over(info, organ)
    if not (reason and reason.startswith("incomplete") and "same position" in reason):
        return
    normal = np.asarray(info.normal, dtype=float)
    at = sorted((float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal), path, ds) for path, ds in items)
    for (z0, p0, d0), (z1, p1, d1) in pairwise(at):
        if abs(z1 - z0) < 1e-3:
            same = " (the same instance twice)" if d0.SOPInstanceUID == d1.SOPInstanceUID else ""
            raise InputError(
                f"{p0} and {p1}: two slices of {info.label()} at one position{same}; a series holds each slice once: "
                "remove one (or name another series with --series)"
            )

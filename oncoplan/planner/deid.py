"""Privacy: what a policy may see of a case, and a guard on every byte that leaves the machine.

:func:`build_observation` turns a case (its clinical row and, optionally, one CT series) into an
:class:`Observation`: a text built only from an allow-list of clinical fields (age, sex, Child-Pugh
class, AFP, tumor size and nodularity, vascular invasion), and PNG images rendered from pixel
data alone (no DICOM header, no PNG text/EXIF chunks). No PatientID, PatientName, date, UID or
accession number is ever read into them. Ages over 89 are written "90 or older" (HIPAA safe
harbour). A series flagged ``BurnedInAnnotation = YES`` gives no image.

The observation also carries (never shows) the case's known identifiers, so that
:func:`check_outgoing` can refuse a request body that contains any of them, any DICOM UID
(dotted digits under the 0/1/2 roots), or any date (``YYYYMMDD``, ``YYYY-MM-DD``, ``DD/MM/YYYY``,
``MM-DD-YYYY``, ``12 March 2009``, ``March 12, 2009`` ...). Embedded images must be PNG with only
the IHDR, PLTE, IDAT and IEND chunks.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Seed B.2-B.4 intensity window for lipiodol/necrosis/viable tissue.
WINDOW_HU: tuple[float, float] = (-175.0, 600.0)
MAX_IMAGE_SIZE = 512

# Clinical columns an observation may use (TCIA names); everything else in a row is ignored.
ALLOWED_FIELDS: tuple[str, ...] = ("age", "Sex", "CPS", "AFP", "Tr_Size", "tumor_nodul", "Vascular invasion")
# Row columns that identify the patient (never shown; scanned for by the guard).
IDENTIFIER_COLUMNS: tuple[str, ...] = ("TCIA_ID", "case_id", "PatientID", "PatientName", "AccessionNumber")
# DICOM attributes whose values identify the patient or the study (never shown; scanned for).
IDENTIFIER_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "PatientBirthDate",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
)
_PERSON_NAMES = frozenset(
    {
        "PatientName",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
    }
)
MIN_IDENTIFIER_LENGTH = 3  # shorter name parts ("M", "LI") are only matched as part of the full name

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ALLOWED_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_DATA_URL = re.compile(r"\Adata:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)\Z", re.DOTALL)

_UID = re.compile(r"(?<![\d.])[0-2](?:\.\d+){2,}(?![\d.])")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATES = (
    re.compile(r"(?<!\d)(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)"),  # DICOM DA
    re.compile(r"(?<!\d)(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<![\d.])(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)?\d\d(?![\d.])"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\s+(?:19|20)\d\d\b", re.IGNORECASE),
    re.compile(rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d\d\b", re.IGNORECASE),
)


class PrivacyError(RuntimeError):
    """A request would carry identifying data; nothing was sent."""


@dataclass(frozen=True)
class Observation:
    """What a policy sees of one case: de-identified text and PNG images.

    `forbidden` holds the case's identifiers for :func:`check_outgoing`; it is never sent.
    """

    text: str
    images: tuple[bytes, ...] = ()
    image_note: str = ""
    forbidden: frozenset[str] = field(default=frozenset(), repr=False)


# -- building ------------------------------------------------------------------------------------


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return str(value).strip() not in ("", "NA", "nan", "None")


def clinical_text(row: Mapping[str, object], age: object = None, sex: object = None) -> str:
    """The observation text from the allow-listed clinical fields of `row` (and header age/sex)."""
    parts = ["De-identified case. Pre-treatment liver CT of a patient with hepatocellular carcinoma."]
    if _present(row.get("age")):
        age = row["age"]
    if _present(age):
        years = int(float(str(age)))
        parts.append("Age: 90 years or older." if years > 89 else f"Age: {years} years.")
    sex_value = row.get("Sex") if _present(row.get("Sex")) else sex
    if _present(sex_value):
        s = str(sex_value).strip().upper()
        label = {"1": "male", "M": "male", "2": "female", "F": "female"}.get(s.split(".")[0])
        if label:
            parts.append(f"Sex: {label}.")
    if _present(row.get("CPS")):
        cps = str(row["CPS"]).strip().upper()
        if cps in ("A", "B", "C"):
            parts.append(f"Child-Pugh class: {cps}.")
    if _present(row.get("AFP")):
        parts.append(f"AFP: {float(str(row['AFP'])):.1f} ng/mL.")
    if _present(row.get("tumor_nodul")):
        nodul = str(row["tumor_nodul"]).strip().lower()
        if nodul in ("uninodular", "multinodular"):
            parts.append(f"Tumor: {nodul}.")
    if _present(row.get("Tr_Size")):
        parts.append(f"Largest tumor diameter: {float(str(row['Tr_Size'])):.1f} cm.")
    if _present(row.get("Vascular invasion")):
        vi = str(row["Vascular invasion"]).strip().split(".")[0]
        if vi in ("0", "1"):
            parts.append(f"Vascular invasion: {'yes' if vi == '1' else 'no'}.")
    return " ".join(parts)


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [s for v in value for s in _values(v)]
    text = str(value).strip()
    return [text] if text else []


def identifiers_of(row: Mapping[str, object] | None = None, datasets: Iterable[Any] = ()) -> frozenset[str]:
    """The identifying values of a case: ID/name columns of `row`, IDs, names, UIDs and dates in DICOM.

    Person names also count by component (``DOE^JANE``: ``DOE``, ``JANE``, ``DOE JANE``), for
    components of at least :data:`MIN_IDENTIFIER_LENGTH` characters.
    """
    found: set[str] = set()
    names: set[str] = set()
    for key in IDENTIFIER_COLUMNS:
        if row is not None and _present(row.get(key)):
            (names if "Name" in key else found).update(_values(row[key]))
    for ds in datasets:
        for kw in IDENTIFIER_KEYWORDS:
            (names if kw in _PERSON_NAMES else found).update(_values(ds.get(kw)))
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            found.update(_values(meta.get("MediaStorageSOPInstanceUID")))
    for name in names:
        found.add(name)
        parts = [p.strip() for p in re.split(r"[\^=]+", name) if p.strip()]
        found.update(p for p in parts if len(p) >= MIN_IDENTIFIER_LENGTH)
        found.add(" ".join(parts))
    return frozenset(v for v in found if v)


def _slice_order(datasets: Sequence[Any]) -> list[Any]:
    def position(ds: Any) -> float:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        return float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))

    return sorted(datasets, key=position)


def volume_hu(datasets: Sequence[Any]) -> np.ndarray:
    """A (slices, rows, cols) HU volume of one CT series, slices along the slice normal."""
    slices = []
    for ds in _slice_order(datasets):
        pixels = ds.pixel_array.astype(np.float32)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(pixels * slope + intercept)
    return np.stack(slices)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2D uint8 array, with no chunk but IHDR, IDAT and IEND."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("png_bytes needs a 2D uint8 array")
    height, width = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def render_slice(hu: np.ndarray, window: tuple[float, float] = WINDOW_HU, max_size: int = MAX_IMAGE_SIZE) -> bytes:
    """PNG of one HU slice in `window`, subsampled by an integer step to at most `max_size` pixels."""
    step = max(1, int(np.ceil(max(hu.shape) / max_size)))
    lo, hi = window
    grey = np.clip((hu[::step, ::step] - lo) / (hi - lo), 0.0, 1.0)
    return png_bytes(np.round(grey * 255.0).astype(np.uint8))


def build_observation(
    row: Mapping[str, object] | None = None,
    datasets: Sequence[Any] = (),
    tumor_mask: np.ndarray | None = None,
) -> Observation:
    """The de-identified observation of a case.

    `row`: the case's clinical row (cohort.csv / TCIA names); only :data:`ALLOWED_FIELDS` are read.
    `datasets`: one CT series (pydicom datasets, e.g. the pre-treatment portal-venous phase); one
    axial slice is rendered: the one with the most tumor in `tumor_mask` (same shape as the
    series volume, slices along the slice normal), else the middle one.
    """
    row = row or {}
    datasets = list(datasets)
    age = sex = None
    if datasets:
        header_age = str(datasets[0].get("PatientAge", "") or "")
        age = int(header_age[:3]) if re.fullmatch(r"\d{3}Y", header_age) else None
        sex = datasets[0].get("PatientSex") or None
    text = clinical_text(row, age, sex)
    images: tuple[bytes, ...] = ()
    note = ""
    if datasets:
        if any(str(ds.get("BurnedInAnnotation", "")).upper() == "YES" for ds in datasets):
            note = "no image: the series has burned-in annotation"
        else:
            vol = volume_hu(datasets)
            if tumor_mask is not None and tumor_mask.shape == vol.shape and tumor_mask.any():
                index = int(np.argmax(tumor_mask.reshape(len(vol), -1).sum(axis=1)))
                where = "through the largest tumor cross-section"
            else:
                index = len(vol) // 2
                where = "at the middle of the series"
            images = (render_slice(vol[index]),)
            note = f"one axial CT slice {where}, window [{WINDOW_HU[0]:g}, {WINDOW_HU[1]:g}] HU"
    return Observation(text, images, note, identifiers_of(row, datasets))


# -- guarding ------------------------------------------------------------------------------------


def _check_png(data: bytes) -> None:
    if not data.startswith(_PNG_SIGNATURE):
        raise PrivacyError("an embedded image is not a PNG")
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise PrivacyError("an embedded PNG is truncated")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind not in _PNG_ALLOWED_CHUNKS:
            raise PrivacyError(f"an embedded PNG carries a {kind.decode('latin-1')!r} chunk (metadata)")
        pos += 12 + length


def check_text(text: str, forbidden: Iterable[str] = ()) -> None:
    """Raise :class:`PrivacyError` if `text` holds a UID, a date or one of the `forbidden` values."""
    for m in _UID.finditer(text):
        if m.group(0).count(".") >= 3 or len(m.group(0)) >= 10:  # not a version such as "1.26.4"
            raise PrivacyError(f"a DICOM UID-like value at character {m.start()}")
    for pattern in _DATES:
        m = pattern.search(text)
        if m:
            raise PrivacyError(f"a date at character {m.start()}")
    for value in forbidden:
        value = value.strip()
        if len(value) < MIN_IDENTIFIER_LENGTH:
            continue
        m = re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", text, re.IGNORECASE)
        if m:
            raise PrivacyError(f"a known patient identifier at character {m.start()}")


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def check_outgoing(body: bytes | str, forbidden: Iterable[str] = (), exempt: Iterable[str] = ()) -> None:
    """Refuse (raise :class:`PrivacyError`) a request body with identifying content.

    A JSON body is checked string by string after JSON decoding (so ``\\u`` escapes hide
    nothing); ``data:`` URLs must be PNG with only image chunks and are not text-scanned; strings
    equal to one of `exempt` (the model name, e.g. ``gpt-4o-2024-08-06``) are skipped. Any other
    body is scanned as text.
    """
    forbidden = list(forbidden)
    skip = set(exempt)
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        value = json.loads(text)
    except ValueError:
        check_text(text, forbidden)
        return
    for s in _strings(value):
        if s in skip:
            continue
        m = _DATA_URL.match(s)
        if m:
            if m.group("mime").lower() != "image/png":
                raise PrivacyError(f"an embedded {m.group('mime')} (only PNG may be sent)")
            try:
                data = base64.b64decode(m.group("data"), validate=True)
            except binascii.Error:
                raise PrivacyError("an embedded image is not valid base64") from None
            _check_png(data)
            continue
        check_text(s, forbidden)


# -- removing ------------------------------------------------------------------------------------

_TITLED_NAME = re.compile(r"\b(?:Dr|Drs|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?")
_LONG_NUMBER = re.compile(r"(?<![\w.])[A-Za-z]{0,4}[-#:]?\d{6,}(?![\w.])")
_ID_LABEL = re.compile(
    r"\b(?:MRN|NHS|ID|Acc(?:ession)?)\b\.?\s*(?:no\b\.?|number|#)?\s*[:#]?\s*(?=[\w-]*\d)[A-Za-z0-9][\w-]{2,}", re.I
)
_OLD_AGE = re.compile(r"\b(?:9\d|1[0-4]\d)(?=[- ]?(?:years?|yrs?|yo|y/o|-year))", re.IGNORECASE)


def redact_text(text: str, forbidden: Iterable[str] = ()) -> str:
    """`text` (a free-text clinical note) without what :func:`check_text` refuses: the case's `forbidden`
    values (its IDs, names and name parts, UIDs and dates, as :func:`identifiers_of` finds them), DICOM
    UIDs and dates; and without titled names ("Dr Smith"), labelled IDs ("MRN: 12345"), runs of six or more
    digits, and ages over 89 (written 90). Each is replaced by a bracketed placeholder. A name the study does
    not hold and no title announces is not recognised: :func:`check_outgoing` still checks the request."""
    for value in sorted({v.strip() for v in forbidden}, key=len, reverse=True):
        if len(value) >= MIN_IDENTIFIER_LENGTH:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", "[removed]", text, flags=re.I)
    text = _UID.sub("[uid]", text)
    for pattern in _DATES:
        text = pattern.sub("[date]", text)
    text = _TITLED_NAME.sub("[name]", text)
    text = _ID_LABEL.sub("[id]", text)
    text = _LONG_NUMBER.sub("[number]", text)
    return _OLD_AGE.sub("90", text)

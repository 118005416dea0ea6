"""DICOM Encapsulated PDF of a report about a CT series, through pydicom.

The SDK's DICOMEncapsulatedPDFWriterOperator (SDK 4.0) refuses every PDF when `pypdf` is not
installed (its PDF check imports it optionally), writes Modality OT where the Encapsulated
Document Series needs DOC, and adds attributes the IOD does not have (dciodvfy warns). This
writer puts the report in the CT's study and references the CT instances it was derived from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .fsio import atomic_path
from .seg import RESEARCH_USE

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def encapsulated_pdf(
    pdf: bytes,
    ct: Sequence[Dataset],
    title: str,
    series_description: str,
    series_number: int = 903,
    manufacturer: str = "OncoPlan",
    software_versions: str = "0.1.0",
) -> Dataset:
    """An Encapsulated PDF instance in the study of `ct`, its source instances the CT slices."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    if RESEARCH_USE not in series_description.lower():
        series_description = f"{series_description} ({RESEARCH_USE})"
    now = datetime.now()
    first = ct[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in PATIENT_STUDY:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer = manufacturer
    ds.SoftwareVersions = software_versions
    ds.ConversionType = "WSD"  # workstation: a generated document, not a scan
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report names the patient's study
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    sources = []
    for slice_ in ct:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = slice_.SOPClassUID, slice_.SOPInstanceUID
        sources.append(ref)
    ds.SourceInstanceSequence = sources
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def write_encapsulated_pdf(ds: Dataset, path: str | Path) -> Path:
    """Save; the file appears only when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path

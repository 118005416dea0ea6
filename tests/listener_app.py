"""A small real app for the listener tests (the issue allows a trivial app to stand in for
the heavy ones): reads the study it is given and writes one derived CT instance per study,
with UIDs derived from the study so a rerun writes the same instance.

    python tests/listener_app.py IN OUT [--sleep S] [--fail-once MARKER] [--ledger FILE] [--bad-result]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--fail-once", type=Path, help="fail if this marker is absent (and create it)")
    ap.add_argument("--ledger", type=Path, help="append the study UID here when done")
    ap.add_argument("--bad-result", action="store_true", help="also write a result whose SOP UID is 200 characters")
    args = ap.parse_args()
    if args.fail_once and not args.fail_once.exists():
        args.fail_once.touch()
        print("failing once on purpose", file=sys.stderr)
        return 1
    time.sleep(args.sleep)
    files = sorted(args.input.rglob("*.dcm"))
    cts = [ds for ds in (pydicom.dcmread(f) for f in files) if ds.get("Modality") == "CT"]
    if not cts:
        print(f"{args.input}: no CT instance", file=sys.stderr)
        return 2
    ds = min(cts, key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    study = str(ds.StudyInstanceUID)
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "result-series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study, "result"])
    ds.SeriesDescription, ds.SeriesNumber = "RESULT research use only", 999
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = f"{len(cts)} CT instances received"
    args.output.mkdir(parents=True, exist_ok=True)
    ds.save_as(args.output / "result.dcm", enforce_file_format=True)
    if args.bad_result:  # a second result no PACS will take: its UID is not a UID (PS3.5 9.1: at most 64)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1." + "2" * 198
        ds.save_as(args.output / "bad.dcm", enforce_file_format=True)
    if args.ledger:
        with open(args.ledger, "a") as fh:
            fh.write(study + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

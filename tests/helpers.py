"""Small readers and runners the tests share."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import SimpleITK as sitk

# Tiny TACE bundle sizes for tests that run all three bundles together (one voxel spacing for all).
TINY_TACE: dict[str, dict[str, object]] = {
    "tace_dynamics": {"channels": [8, 16, 16], "roi_size": [16, 16, 16], "pixdim": [6.0, 6.0, 6.0]},
    "tace_assistant": {"filters": [4, 8, 16], "roi_size": [32, 32, 32], "pixdim": [6.0, 6.0, 6.0]},
    "tace_survival": {
        "channels": [8, 16, 16],
        "roi_size": [16, 16, 16],
        "pixdim": [6.0, 6.0, 6.0],
        "eval_patches": 2,
        "num_heads": 2,
    },
}


def cohort_rows(cohort: Path) -> list[dict[str, str]]:
    with open(cohort / "cohort.csv") as fh:
        return list(csv.DictReader(fh))


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def run_bundle(bundle: Path, args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> str:
    """`python -m monai.bundle run` in `bundle` (or under `launcher`, e.g. torchrun); returns its log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        *(launcher or [sys.executable]),
        "-m",
        "monai.bundle",
        "run",
        "--bundle_root",
        str(bundle),
        "--logging_file",
        str(bundle / "configs" / "logging.conf"),
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=bundle, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def verify_metadata(bundle: Path, schema: Path) -> None:
    """`monai.bundle verify_metadata` against the offline copy of the schema."""
    meta = bundle / "configs" / "metadata.json"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "verified with no error" in out.stdout + out.stderr, out.stdout + out.stderr


def text_sr(ct: pydicom.Dataset, text: str) -> pydicom.Dataset:
    """A text SR holding a clinical note, as a site would store one with the CT."""
    item = hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121060", "DCM", "History"),
        value=text,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("11506-3", "LN", "Progress note"))
    root.ContentSequence = [item]
    return hd.sr.EnhancedSR(
        evidence=[ct],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=7,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
    )


def tiny_tace_models(out: Path) -> Path:
    """MODELS/<bundle>/configs (inference.json at the TINY_TACE sizes), models/model.pt (random
    weights) and the shipped non-network models (models/*.json): the TACE app's plumbing at test speed;
    the plan itself means nothing."""
    import json
    import shutil

    import torch

    from oncoplan.runtime.bundles import bundle_parser

    root = Path(__file__).resolve().parents[1]
    for i, (name, tiny) in enumerate(TINY_TACE.items()):
        bundle = out / name
        shutil.copytree(root / "bundles" / name / "configs", bundle / "configs")
        config = json.loads((bundle / "configs" / "inference.json").read_text())
        (bundle / "configs" / "inference.json").write_text(json.dumps({**config, **tiny}, indent=1))
        torch.manual_seed(i)
        net = bundle_parser(bundle, overrides={"device": "$torch.device('cpu')"}).get_parsed_content("network")
        if name == "tace_dynamics":  # MONAI zero-initialises the output conv: perturb so outputs vary
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        (bundle / "models").mkdir()
        torch.save(net.state_dict(), bundle / "models" / "model.pt")
        for fitted in (root / "bundles" / name / "models").glob("*.json"):  # e.g. the response Cox model
            shutil.copy2(fitted, bundle / "models" / fitted.name)
    return out

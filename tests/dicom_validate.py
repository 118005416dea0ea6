"""dciodvfy (dicom3tools) as a test oracle: errors fail, warnings must be on the allow-list."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# Warnings we accept (regular expressions), each with the reason.
ALLOWED_WARNINGS: dict[str, str] = {
    r"^Warning - Unrecognized defined term <99ONCOPLAN> for value 1 of attribute <Coding Scheme Designator>": (
        "the TACE plan SR's concepts without a standard code use a private coding scheme ('99' prefix, "
        "PS3.16 section 8), declared in its Coding Scheme Identification Sequence; dciodvfy knows only PS3.16's"
    ),
}


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None


def problems(path: Path) -> list[str]:
    """Error and non-allowed warning lines dciodvfy prints for one file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    bad = [ln for ln in lines if ln.startswith("Error")]
    for ln in lines:
        if ln.startswith("Warning") and not any(re.search(p, ln) for p in ALLOWED_WARNINGS):
            bad.append(ln)
    return bad


def validate_all(paths: Iterable[Path]) -> dict[str, list[str]]:
    """Map of file -> problems, for every file that has any."""
    return {str(p): probs for p in paths if (probs := problems(p))}

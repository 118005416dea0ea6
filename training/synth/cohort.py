"""Generate a whole synthetic cohort: cases with a progress bar, cohort.csv, all-or-nothing output."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from oncoplan.errors import InputError
from oncoplan.fsio import atomic_output_dir
from oncoplan.training.synth.scan import SIZES

KINDS = ("breast", "liver")
SITES = ("internal", "external")
PROTOCOLS = ("practice", "random")


def _writer(kind: str) -> Callable[..., dict[str, object]]:
    if kind == "breast":
        from oncoplan.training.synth.write_breast import write_case
    else:
        from oncoplan.training.synth.write_liver import write_case
    return write_case


def generate_cohort(
    kind: str,
    out: Path,
    cases: int,
    seed: int = 0,
    site: str = "internal",
    size: str = "full",
    progress: bool = True,
    protocols: str = "practice",
    finish: Callable[[Path], None] | None = None,
    generator: str | None = None,
) -> Path:
    """Write `cases` synthetic cases of `kind` and DIR/cohort.csv; returns the cohort folder. `finish` (e.g. the
    PACS shaping of `synth --pacs`) runs on the complete cohort in its scratch folder, before the rename: if
    it fails, nothing is left."""
    if kind not in KINDS:
        raise InputError(f"unknown cohort kind {kind!r}; choose breast or liver")
    if cases < 1:
        raise InputError(f"--cases must be at least 1 (got {cases})")
    if site not in SITES:
        raise InputError(f"unknown site {site!r}; choose internal or external")
    if size not in SIZES:
        raise InputError(f"unknown size {size!r}; choose {' or '.join(SIZES)}")
    if protocols not in PROTOCOLS or (kind == "breast" and protocols != "practice"):
        raise InputError(f"--protocols {protocols!r}: choose practice or random (random for liver only)")
    if generator is not None and kind != "liver":
        raise InputError(f"--generator {generator!r}: versioned generators are for liver cohorts only")
    options: dict[str, str] = {}
    if kind == "liver":
        from oncoplan.training.synth.liver import DEFAULT_GENERATOR, GENERATORS

        generator = generator or DEFAULT_GENERATOR
        if generator not in GENERATORS:
            raise InputError(f"unknown --generator {generator!r}; choose {' or '.join(GENERATORS)}")
        # The generator decides what the images show, who the physicians are and the ground truth of each case.
        options = {"generator": generator, "protocols": protocols}
    write_case = _writer(kind)
    with atomic_output_dir(out) as scratch:
        rows = [
            write_case(scratch, i, seed, site, size, **options)
            for i in tqdm(range(cases), desc=f"synth {kind}", unit="case", disable=not progress)
        ]
        with open(scratch / "cohort.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        meta = {
            "kind": kind,
            "cases": cases,
            "seed": seed,
            "site": site,
            "size": size,
            "synthetic": True,
            **options,
        }
        (scratch / "cohort.json").write_text(json.dumps(meta, indent=1))
        if finish is not None:
            finish(scratch)
    return Path(out)

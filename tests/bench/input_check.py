"""What decoding every slice of the chosen series costs the input check (issue 31: a corrupt slice anywhere
is one line before the graph), on the demo's full-size breast study as a PACS sends it.

    python -m tests.bench.input_check [--transfer-syntax jpeg-lossless-sv1] [--repeats 3]

Prints the input check's wall time (best of --repeats) and, inside it, the decoding of the chosen series'
slices beyond the first (what the check did not decode before).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from oncoplan.operators import input_check
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.synth.pacs import pacs_shape_cohort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transfer-syntax", default=None, help="as synth --transfer-syntax (default: none)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cohort = generate_cohort(
            "breast",
            Path(tmp) / "c",
            1,
            0,
            "internal",
            "full",
            progress=False,
            finish=lambda c: pacs_shape_cohort(c, "breast", args.transfer_syntax),
        )
        study = next(p for p in sorted(cohort.iterdir()) if p.is_dir()) / "dicom"
        original = input_check.check_decodable
        spent = []

        def timed(ds, path):
            t = time.perf_counter()
            original(ds, path)
            spent.append(time.perf_counter() - t)

        input_check.check_decodable = timed
        best = None
        for _ in range(args.repeats):
            spent.clear()
            t = time.perf_counter()
            choice = input_check.check_input_folder(study, "breast")
            total = time.perf_counter() - t
            if best is None or total < best[0]:
                best = (total, sum(spent), len(spent), choice.series.slices)
        total, decode, decoded, slices = best
        per_slice = decode / decoded
        print(
            f"{args.transfer_syntax or 'explicit VR little endian'}: {slices} slices of "
            f"{choice.series.datasets[0].Rows}x{choice.series.datasets[0].Columns}; input check {total:.2f} s, "
            f"of which decoding {decoded} slices {decode:.2f} s ({1000 * per_slice:.1f} ms a slice); "
            f"the {slices - 1} slices beyond the first {per_slice * (slices - 1):.2f} s"
        )


if __name__ == "__main__":
    main()

"""Two demo output folders give the same plan and the same SEG voxels (a refactor changed no behaviour).

python -m tests.bench.compare_demo OLD_DEMO_OUT NEW_DEMO_OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pydicom

a, b = Path(sys.argv[1]), Path(sys.argv[2])
pa = json.loads(next(a.rglob("plan.json")).read_text())
pb = json.loads(next(b.rglob("plan.json")).read_text())
same = all(pa[k] == pb[k] for k in ("ranked", "best", "pick", "evaluations"))
print(f"plan.json: {len(pa['ranked'])} ranked protocols; ranking, risks, best, pick and evaluations identical: {same}")
for name in ("ctv_seg.dcm", "tace_post_seg.dcm"):
    fa, fb = next(a.rglob(name)), next(b.rglob(name))
    xa, xb = pydicom.dcmread(fa).pixel_array, pydicom.dcmread(fb).pixel_array
    print(name, "voxels identical:", xa.shape == xb.shape and bool((xa == xb).all()), int(xa.sum()), int(xb.sum()))

"""Per-item effects of the planner's stages (`python -m oncoplan.training.planner.item_effects`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from oncoplan.training.planner.item_effects import item_effects, item_pairs

STAGES = Path(__file__).resolve().parents[1] / "training" / "planner" / "docs" / "stage_ranking_heldout_int.json"


def test_pairs_differ_by_exactly_one_item() -> None:
    space = ["Cisplatin; Lipiodol", "Cisplatin; Lipiodol; LC Beads", "Doxorubicin; LC Beads", "Cisplatin; LC Beads"]
    assert sorted(item_pairs(space)) == [("LC Beads", 0, 1), ("Lipiodol", 3, 1)]


def test_effects_on_a_shipped_stage_ranking(tmp_path: Path) -> None:
    report = json.loads(STAGES.read_text())
    effects = item_effects(report)
    beads = effects["LC Beads"]
    # The ground truth's own viable fraction moves with the true OS whenever the item helps every time.
    assert beads["true_os_better_share"] == 1.0 and beads["stages"]["true_viable_fraction"]["agreement"] == 1.0
    first = report["cases"][0]
    n = sum(item == "LC Beads" for item, _, _ in item_pairs(first["space"])) * len(report["cases"])
    assert beads["pairs"] == n
    done = subprocess.run(
        [sys.executable, "-m", "oncoplan.training.planner.item_effects", str(STAGES), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "| LC Beads |" in (tmp_path / "item_effects.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "oncoplan.training.planner.item_effects", str(tmp_path / "item_effects.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1

"""The ANOVA separation of a plan's top protocols and the gated planner's bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import f_oneway

from oncoplan.planner.separation import anova_f, main, separation_report


def test_anova_f_matches_scipy_one_way() -> None:
    rng = np.random.default_rng(0)
    risks = rng.normal(0, 1, (5, 2)) + np.arange(5)[:, None] * 0.5
    f, p = anova_f(risks)
    expected = f_oneway(*risks)
    assert f == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)


def test_anova_f_separates_spread_means_not_noise() -> None:
    assert anova_f([[1.0, 1.1], [2.0, 2.1], [3.0, 3.1]])[1] < 0.01
    assert anova_f([[1.0, 2.0], [1.1, 2.1], [0.9, 1.9]])[1] > 0.5
    with pytest.raises(ValueError):
        anova_f([[1.0], [2.0]])


def _case(case_id: str, samples: list[list[float]], world: float, policy: float) -> dict:
    return {
        "case_id": case_id,
        "plan": {"top": [{"sample_risks": s} for s in samples]},
        "methods": {"world_model": {"regret_months": world}, "policy_top1": {"regret_months": policy}},
    }


def test_gate_keeps_a_separating_world_model_and_defers_otherwise(tmp_path, capsys) -> None:
    evaluation = {
        "cases": [
            _case("A", [[1.0, 1.01], [2.0, 2.01], [3.0, 3.01]], world=0.0, policy=4.0),  # separated: kept
            _case("B", [[1.0, 2.0], [1.1, 2.1], [0.9, 1.9]], world=9.0, policy=1.0),  # noise: deferred
            _case("C", [[1.0, 1.0], [2.0, 2.0]], world=2.0, policy=5.0),  # one risk per protocol: no test, kept
        ]
    }
    report = separation_report(evaluation, alpha=0.05)
    assert [r["world_model_kept"] for r in report["cases"]] == [True, False, True]
    assert [r["gated"] for r in report["cases"]] == [0.0, 1.0, 2.0]
    assert report["cases"][2]["f"] is None and report["cases"][2]["p"] is None
    json.dumps(report["cases"], allow_nan=False)
    assert report["summary_regret_months"]["gated"][0] == pytest.approx(1.0)
    path = tmp_path / "planning_evaluation.json"
    path.write_text(json.dumps(evaluation))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "gated: 1.00" in out and "C: no noise, no test" in out
    path.write_text("{}")
    assert main([str(path)]) == 2

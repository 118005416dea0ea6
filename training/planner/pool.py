"""Pool `oncoplan evaluate tace` runs of one planner on different held-out cohorts into one report
(means, bootstrap CIs and paired differences over all their cases), for CIs that one cohort
cannot narrow. The runs must share settings, search, action sets and heuristic.

    python -m oncoplan.training.planner.pool RUN1/planning_evaluation.json RUN2/...@13-24 --out DIR

`PATH@A-B` keeps that run's cases A to B (1-based, in its order), e.g. the ones never looked at
while a method was being designed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oncoplan.errors import InputError
from oncoplan.planner.search import SearchSettings
from oncoplan.training.planner.evaluate import summarise, write_report

# What makes two runs one planner; the pooled report carries it, so its page says how the cases were planned
# (the evaluation path's practice prior and mask included: a report without them predates 2026-12-07).
SAME = (
    *("settings", "search", "action_sets", "heuristic", "bundle_overrides", "clinical", "path", "practice_prior"),
    *("mask", "app_settings", "app_models", "lesion_read", "generator"),
)
CARRIED = (
    *("heuristic", "bundle_overrides", "clinical", "path", "practice_prior", "mask", "app_settings", "app_models"),
    *("lesion_read", "generator"),
)


def pool(reports: Sequence[dict[str, Any]], names: Sequence[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    first = reports[0]
    for name, report in zip(names[1:], reports[1:], strict=True):
        differ = [k for k in SAME if report.get(k) != first.get(k)]
        differ += ["policy"] if _policy(report) != _policy(first) else []
        if differ:
            raise InputError(f"{name}: not the same planner as {names[0]} ({', '.join(differ)} differ)")
    cases = [{**c, "case_id": f"{r['cohort']}:{c['case_id']}"} for r in reports for c in r["cases"]]
    prepared, cohorts = (" + ".join(str(r[k]) for r in reports) for k in ("prepared", "cohort"))
    settings, train = SearchSettings(**first["settings"]), first.get("train_cohort")
    report = summarise(
        cases, settings, first["search"], first["action_sets"], prepared, cohorts, train, n_bootstrap, seed
    )
    carried = {k: first[k] for k in CARRIED if k in first}
    if any("mask_fallbacks" in r for r in reports):
        carried["mask_fallbacks"] = sum(int(r.get("mask_fallbacks", 0)) for r in reports)
    fallbacks = sum(int((r.get("policy") or {}).get("fallbacks", 0)) for r in reports)
    policy = {**(first.get("policy") or {"kind": "offline", "label": "offline"}), "fallbacks": fallbacks}
    return {**report, **carried, "policy": policy}


def _policy(report: dict[str, Any]) -> tuple[str, str]:
    """Who proposed the candidates (kind, label); a report without one planned with the offline policy."""
    policy = report.get("policy") or {}
    return str(policy.get("kind", "offline")), str(policy.get("label", "offline"))


def read_run(spec: str) -> dict[str, Any]:
    """A run's report, its cases cut to `@A-B` when the spec ends so."""
    path, _, span = spec.partition("@")
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the evaluation ({exc})") from None
    if span:
        first, _, last = span.partition("-")
        if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) <= len(report["cases"])):
            raise InputError(f"{spec}: cases must be @A-B with 1 <= A <= B <= {len(report['cases'])}")
        report["cases"] = report["cases"][int(first) - 1 : int(last)]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oncoplan.training.planner.pool", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="planning_evaluation.json of each run, optionally @A-B (cases A to B)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        report = pool([read_run(r) for r in args.runs], args.runs, args.n_bootstrap, args.seed)
        js, md = write_report(report, args.out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

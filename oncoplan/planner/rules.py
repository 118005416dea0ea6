"""Deterministic guideline rules: remove clinical conflicts from a protocol, reporting every removal.

The rules are those of :func:`oncoplan.tace.actions.conflicts`: at most one platinum drug
(Cisplatin, Oxaliplatin, Lobaplatin, Nedaplatin), at most one anthracycline (Epirubicin,
Pirarubicin/THP, Idarubicin, Doxorubicin), and PVA excludes Absolute Alcohol and Gelatin Sponge.

Which items stay (documented, deterministic): among all conflict-free ways to keep a subset of
the items that take part in a conflict (items in no conflict always stay), the one that keeps
the most prior weight wins, i.e. the largest sum of the items' practice frequencies
(:meth:`Prior.item`, always > 0); ties go to the subset that keeps more items, then to the one
whose items come first in action-base order. So one platinum and one anthracycline stay (the
most used one; on a tie the first in ``ACTION_BASE``), and PVA stays only if it is used more
than the Absolute Alcohol and Gelatin Sponge it conflicts with together.

The rules always run, also after an LLM or reasoning-model refinement.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from oncoplan.planner.prior import Prior
from oncoplan.tace.actions import ACTION_BASE, Protocol, conflicts


@dataclass(frozen=True)
class Removal:
    """One item taken out of a protocol, the rule that took it out and what its conflict kept."""

    item: str
    rule: str
    kept: tuple[str, ...] = ()
    by: str = "rules"  # "rules" or "reasoning-model:<model>"


@dataclass(frozen=True)
class RefinementReport:
    """A protocol before and after refinement, with every removed item and its rule."""

    original: Protocol
    refined: Protocol
    removed: tuple[Removal, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.original != self.refined

    def to_dict(self) -> dict[str, object]:
        return {
            "original": str(self.original),
            "refined": str(self.refined),
            "removed": [{"item": r.item, "rule": r.rule, "kept": list(r.kept), "by": r.by} for r in self.removed],
            "notes": list(self.notes),
        }

    def then(self, later: RefinementReport) -> RefinementReport:
        """This refinement followed by `later` (which must start where this one ended)."""
        if later.original != self.refined:
            raise ValueError("refinements do not chain")
        return RefinementReport(self.original, later.refined, self.removed + later.removed, self.notes + later.notes)


def _keep_key(kept: tuple[str, ...], prior: Prior) -> tuple[float, int, tuple[int, ...]]:
    weight = round(sum(prior.item(a) for a in kept), 12)
    return weight, len(kept), tuple(-ACTION_BASE.index(a) for a in sorted(kept, key=ACTION_BASE.index))


def refine(protocol: Protocol, prior: Prior | None = None) -> RefinementReport:
    """Remove every clinical conflict from `protocol` (module docstring); never adds an item."""
    prior = prior if prior is not None else Prior.from_practice()
    found = conflicts(protocol.items)
    if not found:
        return RefinementReport(protocol, protocol)
    involved = sorted({a for c in found for a in c.items}, key=ACTION_BASE.index)
    fixed = [a for a in protocol.items if a not in involved]
    best: tuple[str, ...] | None = None
    for n in range(len(involved), 0, -1):
        for kept in itertools.combinations(involved, n):
            if conflicts([*fixed, *kept]):
                continue
            if best is None or _keep_key(kept, prior) > _keep_key(best, prior):
                best = kept
    best = best or ()
    removed = []
    for item in involved:
        if item in best:
            continue
        rules = [c for c in found if item in c.items]
        removed.append(
            Removal(
                item=item,
                rule="; ".join(c.rule for c in rules),
                kept=tuple(a for a in involved if a in best and any(a in c.items for c in rules)),
            )
        )
    refined = Protocol.of([*fixed, *best])
    return RefinementReport(protocol, refined, tuple(removed))

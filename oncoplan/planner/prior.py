"""The practice prior: how often physicians use each protocol and each action-base item.

It orders the offline policy's candidates and decides which item the conflict rules keep.
It is fitted from protocol frequencies: the synthetic cohort's site practice
(:data:`PRACTICE`), a ``cohort.csv`` gold column, or any list
of protocols (e.g. the ``protocol`` column of the HCC-TACE-Seg clinical table).

Score of a protocol ``p`` (a mixture, so protocols never seen in practice still get an order)::

    score(p) = EXACT_WEIGHT * freq(p) + (1 - EXACT_WEIGHT) * prod_{a in base} f(a)^[a in p] (1 - f(a))^[a not in p]

``freq(p)`` is the relative frequency of exactly ``p``; ``f(a)`` the smoothed share of
protocols that contain item ``a``: ``(weight(a) + ALPHA) / (total + 2 * ALPHA)``, always in (0, 1).
Practice frequencies (which sum to 1) count as ``PRACTICE_CASES`` cases.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from oncoplan.tace.actions import ACTION_BASE, Protocol

EXACT_WEIGHT = 0.9
ALPHA = 0.5
PRACTICE_CASES = 100.0
# Physicians' practice by kind of site, with frequencies: the offline policy's default prior, and what the
# synthetic cohorts' physicians draw their ("gold") protocols from.
PRACTICE = {
    # HCC-TACE-Seg (MD Anderson): cisplatin/doxorubicin/mitomycin cTACE or doxorubicin LC beads.
    "internal": {
        "Cisplatin; Doxorubicin; Mitomycin; Lipiodol": 0.59,
        "Doxorubicin; LC Beads; Lipiodol": 0.37,
        "Cisplatin; Mitomycin; Lipiodol": 0.04,
    },
    # The MeWM in-house style (seed Table 5): anthracycline/platinum emulsions, gelatin sponge.
    "external": {
        "Raltitrexed; Epirubicin; Lipiodol; Gelatin Sponge": 0.14,
        "Pirarubicin; Lipiodol": 0.14,
        "Pirarubicin; Lipiodol; Gelatin Sponge": 0.14,
        "Cisplatin; Lipiodol": 0.08,
        "Oxaliplatin; Epirubicin; Lipiodol; Gelatin Sponge": 0.14,
        "Epirubicin; Oxaliplatin; Lipiodol": 0.10,
        "Lobaplatin; Epirubicin; Lipiodol; Gelatin Sponge": 0.10,
        "Hydroxycamptothecin; Lipiodol": 0.05,
        "Idarubicin; Lipiodol; PVA": 0.06,
        "Raltitrexed; Lipiodol; Gelatin Sponge": 0.05,
    },
}


@dataclass(frozen=True)
class Prior:
    """Protocol and item frequencies of one practice; see the module docstring for the score."""

    protocol_freq: Mapping[str, float]  # str(Protocol) -> relative frequency, summing to 1
    item_freq: Mapping[str, float]  # action-base item -> smoothed share of protocols containing it
    source: str

    @classmethod
    def from_weights(cls, weights: Mapping[Protocol, float], total: float, source: str) -> Prior:
        """From protocol weights (any scale) that stand for `total` cases."""
        norm = sum(weights.values())
        if norm <= 0 or total <= 0:
            raise ValueError(f"{source}: no protocol to fit a prior from")
        freq: dict[str, float] = {}
        for proto, w in weights.items():
            freq[str(proto)] = freq.get(str(proto), 0.0) + w / norm
        items = {
            a: (sum(w for p, w in weights.items() if a in p.items) / norm * total + ALPHA) / (total + 2 * ALPHA)
            for a in ACTION_BASE
        }
        return cls(freq, items, source)

    @classmethod
    def from_protocols(cls, protocols: Iterable[Protocol | str], source: str = "protocols") -> Prior:
        """Counted from observed protocols (strings in ``"Cisplatin; Lipiodol"`` form or Protocols)."""
        counts: dict[Protocol, float] = {}
        for p in protocols:
            proto = p if isinstance(p, Protocol) else Protocol.parse(p)
            counts[proto] = counts.get(proto, 0.0) + 1.0
        return cls.from_weights(counts, sum(counts.values()), source)

    @classmethod
    def from_practice(cls, site: str | None = None) -> Prior:
        """The synthetic cohort's site practice (``internal``, ``external``), or both sites pooled."""
        sites = [site] if site is not None else sorted(PRACTICE)
        if any(s not in PRACTICE for s in sites):
            raise ValueError(f"unknown site {site!r}; expected one of {', '.join(sorted(PRACTICE))}")
        weights: dict[Protocol, float] = {}
        for s in sites:
            table = PRACTICE[s]
            norm = sum(table.values())
            for text, w in table.items():
                proto = Protocol.parse(text)
                weights[proto] = weights.get(proto, 0.0) + w / norm / len(sites)
        return cls.from_weights(weights, PRACTICE_CASES * len(sites), f"practice:{site or 'pooled'}")

    @classmethod
    def from_cohort(cls, csv_path: str | Path, column: str = "gold_protocol") -> Prior:
        """Fitted from a cohort.csv column of protocols (empty cells skipped)."""
        path = Path(csv_path)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no column {column!r}")
            texts = [(n, (row.get(column) or "").strip()) for n, row in enumerate(reader, start=2)]
        protocols = []
        for line, text in texts:
            if not text:
                continue
            try:
                protocols.append(Protocol.parse(text))
            except ValueError as exc:
                raise ValueError(f"{path}: line {line}: {exc}") from exc
        return cls.from_protocols(protocols, f"cohort:{path.name}:{column}")

    def item(self, name: str) -> float:
        """Smoothed share of practice protocols that contain `name` (canonical)."""
        return self.item_freq[name]

    def score(self, protocol: Protocol) -> float:
        """Unnormalised prior of one protocol (module docstring)."""
        chosen = set(protocol.items)
        log_indep = sum(
            math.log(self.item_freq[a]) if a in chosen else math.log1p(-self.item_freq[a]) for a in ACTION_BASE
        )
        return EXACT_WEIGHT * self.protocol_freq.get(str(protocol), 0.0) + (1 - EXACT_WEIGHT) * math.exp(log_indep)

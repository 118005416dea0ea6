"""The TACE action base (MeWM seed, Figures 10-12) and the clinical-conflict rules.

One place names every drug and embolic, the drug classes, and which combinations are
clinically conflicting; the synthetic cohort, the clinical-table loader and the planner
all import it from here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

DRUGS: tuple[str, ...] = (
    "Raltitrexed",
    "Epirubicin",
    "Oxaliplatin",
    "Lobaplatin",
    "Mitomycin",
    "Idarubicin",
    "Nedaplatin",
    "Pirarubicin",
    "Cisplatin",
    "Hydroxycamptothecin",
    "Doxorubicin",
)
EMBOLICS: tuple[str, ...] = (
    "Lipiodol",
    "Gelatin Sponge",
    "PVA",
    "Absolute Alcohol",
    "NBCA",
    "KMG",
    "LC Beads",
)
ACTION_BASE: tuple[str, ...] = DRUGS + EMBOLICS

# The HCC-TACE-Seg (MD Anderson) practice uses only these.
TCIA_DRUGS: tuple[str, ...] = ("Mitomycin", "Doxorubicin", "Cisplatin")
TCIA_EMBOLICS: tuple[str, ...] = ("Lipiodol", "LC Beads")

DRUG_CLASS: dict[str, str] = {
    "Cisplatin": "platinum",
    "Oxaliplatin": "platinum",
    "Lobaplatin": "platinum",
    "Nedaplatin": "platinum",  # missed by the released MeWM rules
    "Epirubicin": "anthracycline",
    "Pirarubicin": "anthracycline",  # THP; missed by the released MeWM rules
    "Idarubicin": "anthracycline",
    "Doxorubicin": "anthracycline",
    "Mitomycin": "mitomycin",
    "Raltitrexed": "antimetabolite",
    "Hydroxycamptothecin": "camptothecin",
}
DRUG_CLASSES: tuple[str, ...] = ("platinum", "anthracycline", "mitomycin", "antimetabolite", "camptothecin")

# Spelling variants seen in reports and tables -> canonical action name.
_ALIASES: dict[str, str] = {
    "thp": "Pirarubicin",
    "mitomycin-c": "Mitomycin",
    "mitomycin c": "Mitomycin",
    "mmc": "Mitomycin",
    "cisplastin": "Cisplatin",  # misspelt in the HCC-TACE-Seg table
    "ddp": "Cisplatin",
    "adriamycin": "Doxorubicin",
    "hcpt": "Hydroxycamptothecin",
    "10-hydroxycamptothecin": "Hydroxycamptothecin",
    "gelatin sponge particles": "Gelatin Sponge",
    "gelatin foam": "Gelatin Sponge",
    "gelfoam": "Gelatin Sponge",
    "lc beads": "LC Beads",
    "lc bead": "LC Beads",
    "dc beads": "LC Beads",
    "drug-eluting beads": "LC Beads",
    "ethanol": "Absolute Alcohol",
    "absolute ethanol": "Absolute Alcohol",
    "polyvinyl alcohol": "PVA",
    "n-butyl cyanoacrylate": "NBCA",
    "ultra-liquid lipiodol": "Lipiodol",
    "ultraliquid lipiodol": "Lipiodol",
    "ethiodized oil": "Lipiodol",
}
for _name in ACTION_BASE:
    _ALIASES.setdefault(_name.lower(), _name)


def canonical(name: str) -> str:
    """Canonical action-base name of one keyword; raises ValueError outside the action base."""
    key = re.sub(r"\s+", " ", name.strip().lower())
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"{name!r} is not in the TACE action base")


@dataclass(frozen=True)
class Conflict:
    """One clinical-conflict rule that fired: the items it removes and why."""

    rule: str
    items: tuple[str, ...]


def conflicts(actions: Iterable[str]) -> list[Conflict]:
    """Every clinically conflicting pair or group in a protocol (names must be canonical).

    Rules: at most one platinum drug, at most one anthracycline, PVA excludes absolute
    alcohol and gelatin sponge.
    """
    items = set(actions)
    found: list[Conflict] = []
    for cls, label in (("platinum", "platinum"), ("anthracycline", "anthracyclines")):
        members = sorted(d for d in items if DRUG_CLASS.get(d) == cls)
        if len(members) > 1:
            found.append(Conflict(f"at most one {cls} drug (found {len(members)} {label})", tuple(members)))
    if "PVA" in items:
        for other in ("Absolute Alcohol", "Gelatin Sponge"):
            if other in items:
                found.append(Conflict(f"PVA excludes {other}", ("PVA", other)))
    return found


@dataclass(frozen=True)
class Protocol:
    """A TACE protocol: a set of drugs and a set of embolics, in canonical order."""

    drugs: tuple[str, ...]
    embolics: tuple[str, ...]

    @classmethod
    def of(cls, items: Iterable[str]) -> Protocol:
        names = {canonical(i) for i in items}
        return cls(
            drugs=tuple(d for d in DRUGS if d in names),
            embolics=tuple(e for e in EMBOLICS if e in names),
        )

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """From the keyword form used in cohort tables: "Cisplatin; Doxorubicin; Lipiodol"."""
        parts = [p for p in re.split(r"[;,]", text) if p.strip()]
        return cls.of(parts)

    @property
    def items(self) -> tuple[str, ...]:
        return self.drugs + self.embolics

    def __str__(self) -> str:
        return "; ".join(self.items)

    def base_order(self) -> tuple[int, ...]:
        """The items' positions in ACTION_BASE: a total order of protocols, the stable tie-break wherever
        protocols are ranked (the policy's prior, the search's risk)."""
        return tuple(ACTION_BASE.index(a) for a in self.items)

    def multi_hot(self) -> list[int]:
        """One entry per action-base item, in ACTION_BASE order."""
        chosen = set(self.items)
        return [int(a in chosen) for a in ACTION_BASE]


def protocol_space(
    drugs: tuple[str, ...] = DRUGS, embolics: tuple[str, ...] = EMBOLICS, max_drugs: int = 3, max_embolics: int = 2
) -> list[Protocol]:
    """Every protocol with 1..max_drugs drugs and 1..max_embolics embolics (conflicts included)."""
    out = []
    for nd in range(1, max_drugs + 1):
        for ds in itertools.combinations(drugs, nd):
            for ne in range(1, max_embolics + 1):
                for es in itertools.combinations(embolics, ne):
                    out.append(Protocol.of(ds + es))
    return out

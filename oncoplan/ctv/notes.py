"""Clinical notes in the seed's Table 5 format, built from tabular fields, parsed, and edited.

"N1mi, breast conserving surgery, left side"; bilateral cases join one clause per side with
"; " (the released code dropped them). Counterfactual edits (laterality, N stage) work on the
parsed form so that a note is only ever rewritten into another well-formed note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from oncoplan.errors import InputError

# The note's vocabulary (the seed's Table 5); the synthetic breast cohort draws its cases from it.
SIDES = ("left", "right")
N_STAGES = ("N0", "N1mi", "N1", "N2", "N3")
SURGERY_TEXT = {"BCS": "breast conserving surgery", "TM": "total mastectomy surgery"}

_SURGERY_ALIASES = {
    "bcs": "BCS",
    "breast conserving surgery": "BCS",
    "breast-conserving surgery": "BCS",
    "lumpectomy": "BCS",
    "partial mastectomy": "BCS",
    "tm": "TM",
    "mastectomy": "TM",
    "total mastectomy": "TM",
    "total mastectomy surgery": "TM",
    "modified radical mastectomy": "TM",
    "mrm": "TM",
}
_N_RE = re.compile(r"^(?:[cpy]{0,2})(N(?:0|1mi|1|2|3)[abc]?)$", re.IGNORECASE)
_T_RE = re.compile(r"^(?:[cpy]{0,2})(T(?:is|[0-4])[a-d]?)$", re.IGNORECASE)


@dataclass(frozen=True)
class SideNote:
    side: str  # "left" | "right"
    surgery: str  # "BCS" | "TM"
    n_stage: str  # N0, N1mi, N1, N2, N3
    t_stage: str | None = None

    def clause(self, with_t_stage: bool = False) -> str:
        parts = [self.n_stage] + ([f"c{self.t_stage}"] if with_t_stage and self.t_stage else [])
        return ", ".join([*parts, SURGERY_TEXT[self.surgery], f"{self.side} side"])


def _surgery(text: str, where: str) -> str:
    key = " ".join(str(text).lower().replace("_", " ").split())
    if key.upper() in SURGERY_TEXT:
        return key.upper()
    if key not in _SURGERY_ALIASES:
        raise InputError(f"{where}: unknown surgery {text!r} (expected breast conserving or mastectomy)")
    return _SURGERY_ALIASES[key]


def _n_stage(text: str, where: str) -> str:
    m = _N_RE.match(str(text).strip())
    if not m:
        raise InputError(f"{where}: unknown N stage {text!r} (expected one of {', '.join(N_STAGES)})")
    stage = m.group(1)
    stage = "N1mi" if stage.lower() == "n1mi" else stage[:2].upper()  # N1a/N1b/N1c count as N1
    return stage


def _side(text: str, where: str) -> str:
    side = str(text).strip().lower()
    side = {"l": "left", "r": "right", "lt": "left", "rt": "right"}.get(side, side)
    if side not in SIDES:
        raise InputError(f"{where}: unknown laterality {text!r} (expected left or right)")
    return side


def side_note(side: str, surgery: str, n_stage: str, t_stage: str | None = None, where: str = "note") -> SideNote:
    t = None
    if t_stage not in (None, "") and (m := _T_RE.match(str(t_stage).strip())):
        t = m.group(1)[0].upper() + m.group(1)[1:]
    return SideNote(_side(side, where), _surgery(surgery, where), _n_stage(n_stage, where), t)


def format_note(sides: list[SideNote], with_t_stage: bool = False) -> str:
    ordered = sorted(sides, key=lambda s: SIDES.index(s.side))
    return "; ".join(s.clause(with_t_stage) for s in ordered)


def parse_note(note: str, where: str = "note") -> list[SideNote]:
    """The Table 5 format back into side records; anything else is an InputError."""
    clauses = [c.strip() for c in str(note).split(";") if c.strip()]
    if not clauses:
        raise InputError(f"{where}: empty clinical note")
    out = []
    for clause in clauses:
        parts = [p.strip() for p in clause.split(",") if p.strip()]
        stage = next((p for p in parts if _N_RE.match(p)), None)
        t_stage = next((p for p in parts if _T_RE.match(p)), None)
        side = next((p.split()[0] for p in parts if p.lower().endswith(" side")), None)
        surgery = next((p for p in parts if p not in (stage, t_stage) and not p.lower().endswith(" side")), None)
        if not (stage and side and surgery):
            raise InputError(
                f"{where}: cannot read clinical note clause {clause!r} "
                "(expected e.g. 'N1, breast conserving surgery, left side')"
            )
        out.append(side_note(side, surgery, stage, t_stage, where))
    if len({s.side for s in out}) != len(out):
        raise InputError(f"{where}: clinical note names the same side twice: {note!r}")
    return out


def note_from_row(row: Mapping[str, object], where: str = "row") -> str:
    """A note from tabular fields.

    Accepts a ready `note`, per-side columns as the synthetic cohort writes them
    (`left_surgery`, `left_n_stage`, `left_t_stage`, `right_...`), or one side as the released
    code's table (`laterality`, `surgery`, `n_stage`/`N stage`, optional `t_stage`/`T stage`).
    """

    def get(*keys: str) -> str | None:
        for k in keys:
            v = row.get(k)
            if v is not None and str(v).strip() not in ("", "nan", "None"):
                return str(v)
        return None

    if note := get("note", "Note", "text"):
        return format_note(parse_note(note, where))
    sides = [
        side_note(s, surgery, stage, get(f"{s}_t_stage"), where)
        for s in SIDES
        if (surgery := get(f"{s}_surgery")) and (stage := get(f"{s}_n_stage"))
    ]
    if not sides and (lat := get("laterality", "Laterality", "side")):
        surgery = get("surgery", "Surgery", "surgery_type")
        stage = get("n_stage", "N stage", "N_stage", "N")
        if not (surgery and stage):
            raise InputError(f"{where}: needs surgery and N stage columns to build a note")
        t = get("t_stage", "T stage", "T_stage", "T")
        lats = SIDES if lat.strip().lower() in ("both", "bilateral") else (lat,)
        sides = [side_note(x, surgery, stage, t, where) for x in lats]
    if not sides:
        raise InputError(f"{where}: no clinical note and no laterality/surgery/N stage fields")
    return format_note(sides)


def swap_laterality(note: str) -> str:
    """Counterfactual: the same clauses on the other side(s)."""
    other = {"left": "right", "right": "left"}
    return format_note([replace(s, side=other[s.side]) for s in parse_note(note)])


def with_n_stage(note: str, n_stage: str) -> str:
    """Counterfactual: every side's N stage set to `n_stage`."""
    return format_note([replace(s, n_stage=_n_stage(n_stage, "n_stage")) for s in parse_note(note)])


def calibration_notes() -> list[str]:
    """Every unilateral Table 5 note (side x surgery x N stage): the spread a context must resolve."""
    return [format_note([SideNote(side, surgery, n)]) for side in SIDES for surgery in SURGERY_TEXT for n in N_STAGES]

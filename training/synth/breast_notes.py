"""Free-text clinical notes for the synthetic breast cohorts, with their ground-truth fields.

A note is drawn from the side records (side, surgery, N stage, T stage) the way clinicians write
them: referral letters, one-line summaries, pathology-style lines, TNM with prefixes and
suffixes (pN1a, ypN0, N1mi, pT2N1aM0), node counts, abbreviations (BCS, WLE, MRM, SSM, NSM),
laterality in many forms (L/Lt/left-sided/(R)), negations ("node negative", "declined
mastectomy"), unrelated sentences (histology, receptors, chemotherapy, cardiac function) and the
other breast's history. `ambiguous_note` writes notes the reader must refuse (no side, no surgery,
two surgeries or two N stages for one side, a bilateral fact without its side), with the reason.
English only. The reader (oncoplan.ctv.note_reader) is tested on hand-written notes that this
generator never produced (tests/data/ctv_free_text_notes.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

SIDE_FORMS = {
    "left": ["left", "Left", "LEFT", "L", "Lt", "left-sided", "left sided"],
    "right": ["right", "Right", "RIGHT", "R", "Rt", "right-sided", "right sided"],
}
SURGERY_FORMS = {
    "BCS": [
        "lumpectomy",
        "BCS",
        "WLE",
        "wide local excision",
        "quadrantectomy",
        "partial mastectomy",
        "breast-conserving surgery",
        "breast conserving therapy",
        "segmental mastectomy",
    ],
    "TM": [
        "mastectomy",
        "total mastectomy",
        "simple mastectomy",
        "MRM",
        "modified radical mastectomy",
        "skin-sparing mastectomy",
        "SSM",
        "nipple-sparing mastectomy",
        "NSM",
    ],
}
N_FORMS = {
    "N0": ["pN0", "ypN0", "cN0", "pN0(sn)", "pN0(i+)", "N0", "node negative", "node-negative", "not node positive"],
    "N1mi": ["pN1mi", "pN1(mi)", "N1mi", "ypN1mi", "micrometastasis in one sentinel node"],
    "N1": ["pN1a", "pN1", "N1", "cN1", "ypN1a", "pN1b", "pN1c"],
    "N2": ["pN2a", "N2", "cN2", "ypN2a", "pN2"],
    "N3": ["pN3a", "N3", "cN3", "pN3b", "pN3c"],
}
COUNT_RANGE = {"N0": (0, 0), "N1": (1, 3), "N2": (4, 9), "N3": (10, 15)}
EXTRAS = [
    "Invasive ductal carcinoma, grade 2, ER+/PR+/HER2-.",
    "Histology: invasive lobular carcinoma, grade 1.",
    "ER 90%, PR 40%, HER2 negative, Ki-67 15%.",
    "Triple negative, grade 3.",
    "Completed 4 cycles of AC followed by weekly paclitaxel.",
    "Adjuvant endocrine therapy with letrozole planned.",
    "Echocardiogram: left ventricular ejection fraction 60%.",
    "She is right-handed and works as a teacher.",
    "Comorbidities: hypertension, type 2 diabetes.",
    "Margins clear (closest 3 mm).",
    "Oncotype DX recurrence score 18.",
    "BRCA testing negative.",
]


class SideFacts(Protocol):
    side: str
    surgery: str
    n_stage: str
    t_stage: str | None


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _side(rng: np.random.Generator, side: str, noun: str = "breast") -> str:
    form = _pick(rng, SIDE_FORMS[side])
    if form in ("L", "R", "Lt", "Rt") or form.endswith("sided"):
        return f"{form} {noun}"
    return f"{form} {noun}" if rng.random() < 0.7 else f"{noun} ({form[0].upper()})"


def _nodes(rng: np.random.Generator, s: SideFacts) -> str:
    n = s.n_stage
    if n in COUNT_RANGE and rng.random() < 0.35:
        lo, hi = COUNT_RANGE[n]
        pos = int(rng.integers(lo, hi + 1))
        total = int(rng.integers(max(pos, 2), max(pos, 2) + 15))
        noun = _pick(rng, ["nodes positive", "lymph nodes involved", "LN positive", "axillary nodes positive"])
        count = f"{pos}/{total} {noun}"
        if rng.random() < 0.5:
            return count
        tnm = _pick(rng, [f for f in N_FORMS[n] if f.startswith(("p", "N", "yp"))])
        return f"{tnm} ({count})"
    return _pick(rng, N_FORMS[n])


def _t(rng: np.random.Generator, s: SideFacts) -> str:
    return f"{_pick(rng, ['p', 'p', 'yp', 'c'])}{s.t_stage}" if s.t_stage else ""


def free_text_note(sides: Sequence[SideFacts], rng: np.random.Generator) -> str:
    """One free-text note whose fields are `sides` (what the reader must recover)."""
    sides = sorted(sides, key=lambda s: s.side)
    if len(sides) == 2:
        return _bilateral(sides, rng)
    s = sides[0]
    other = "right" if s.side == "left" else "left"
    age = int(rng.integers(30, 85))
    surg = _pick(rng, SURGERY_FORMS[s.surgery])
    nodes, t = _nodes(rng, s), _t(rng, s)
    extras = [_pick(rng, EXTRAS) for _ in range(int(rng.integers(0, 3)))]
    year = int(rng.integers(2000, 2018))
    history = (
        f"History of {_side(rng, other)} DCIS treated with lumpectomy and radiotherapy in {year}."
        if rng.random() < 0.12
        else ""
    )
    neg = ""
    if s.surgery == "BCS" and rng.random() < 0.1:
        neg = "Declined mastectomy."
    style = int(rng.integers(6))
    target = "breast" if s.surgery == "BCS" else "chest wall"
    nodal_plan = " and regional nodes" if s.n_stage in ("N1", "N2", "N3") else ""
    if style == 0:
        text = (
            f"{age}-year-old woman, status post {_side(rng, s.side)} {surg}"
            f"{_pick(rng, ['', ' with sentinel node biopsy', ' and axillary dissection'])}, {t} {nodes}. "
            f"Plan: adjuvant RT to the {_side(rng, s.side, target)}{nodal_plan}."
        )
    elif style == 1:
        text = f"{_side(rng, s.side)}, {surg}, {nodes}."
    elif style == 2:
        text = f"Dx: {_side(rng, s.side)} carcinoma. Surgery: {surg}. Path: {t} {nodes}."
    elif style == 3:
        text = f"{_side(rng, s.side)} cancer treated with {surg}. {nodes}."
    elif style == 4 and nodes.startswith(("p", "N", "c", "yp")) and " " not in nodes and t:
        text = f"{t}{nodes.lstrip('pcy')}M0 {_side(rng, s.side)} ca s/p {surg}."
    else:
        text = f"s/p {_side(rng, s.side)} {surg}, {nodes}. {t}."
    parts = [history, text, neg, *extras]
    order = [p for p in parts if p]
    if history and rng.random() < 0.5:  # the history sentence after the current case
        order = [p for p in order if p != history] + [history]
    return " ".join(order).replace(" .", ".").replace(", .", ".").replace("  ", " ").strip()


def _bilateral(sides: Sequence[SideFacts], rng: np.random.Generator) -> str:
    clauses = [
        f"{_pick(rng, ['Left', 'Lt', 'L']) if s.side == 'left' else _pick(rng, ['Right', 'Rt', 'R'])} "
        f"{_pick(rng, ['', 'breast '])}{_pick(rng, SURGERY_FORMS[s.surgery])}, {_nodes(rng, s)}"
        for s in sides
    ]
    if rng.random() < 0.5:
        head = _pick(rng, ["Bilateral breast cancer.", "Synchronous bilateral breast carcinoma.", ""])
        return f"{head} {clauses[0]}; {clauses[1]}.".strip()
    return " ".join(f"{s.side.capitalize()}: {_pick(rng, SURGERY_FORMS[s.surgery])}, {_nodes(rng, s)}." for s in sides)


AMBIGUITIES = ("no_side", "no_surgery", "no_n_stage", "two_surgeries", "two_n_stages", "bilateral_unattributed")


def ambiguous_note(sides: Sequence[SideFacts], rng: np.random.Generator, kind: str | None = None) -> tuple[str, str]:
    """(a note the reader must refuse, which ambiguity it has)."""
    s = sides[0]
    kind = kind or _pick(rng, AMBIGUITIES)
    surg, nodes = _pick(rng, SURGERY_FORMS[s.surgery]), _pick(rng, N_FORMS[s.n_stage])
    other_surg = _pick(rng, SURGERY_FORMS["TM" if s.surgery == "BCS" else "BCS"])
    other_n = _pick(rng, [f for k, fs in N_FORMS.items() if k != s.n_stage for f in fs if f[0] in "pcyN"])
    side = _side(rng, s.side)
    text = {
        "no_side": f"Breast cancer, s/p {surg}, {nodes}. Adjuvant RT planned.",
        "no_surgery": f"{side} cancer, {nodes}. Referred for adjuvant radiotherapy.",
        "no_n_stage": f"{side}, s/p {surg}. Grade 2 IDC.",
        "two_surgeries": f"{side}: {surg} and {other_surg}, {nodes}.",
        "two_n_stages": f"{side}, {surg}, {nodes}, later {other_n}.",
        "bilateral_unattributed": f"Bilateral breast cancer, s/p {surg}, {nodes}.",
    }[kind]
    return text, kind

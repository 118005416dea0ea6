"""Free-text clinical notes -> the fields the CTV depends on (side(s), surgery and N stage per side).

Rules, offline, no model: a radiation oncologist's note (a referral letter, a text SR, "left
breast, BCS, N1", "s/p L lumpectomy, pT1c pN1a (2/12)") is read into `SideNote`s, which are
rendered into the seed's Table 5 note (`notes.format_note`) that the shipped LLMSeg model was
trained on. The model therefore hears exactly what the reader understood, and that is what the
outputs say ("interpreted as: ...").

Why rules and not a model: the fields are few and closed (two sides, two surgery classes, five N
stages); every decision can be tested and explained in one line; a wrong field moves the target to
the wrong breast, so anything the rules do not settle is refused, never guessed:
- no side, or no current side (only history);
- a side without a surgery, or with both breast-conserving surgery and mastectomy (a
  "completion mastectomy" after a lumpectomy is read as mastectomy);
- a side without an N stage, or with two different ones (e.g. cN1 before and ypN0 after
  neoadjuvant chemotherapy: the CTV decision is the physician's), or an explicit stage that
  disagrees with the node count's positivity;
- a fact (surgery, N stage) that cannot be attributed to one side of a bilateral note.

How a note is read: sentences (". ", ";", new lines) are cut into comma chunks; each side word
("left", "L breast", "left-sided", "bilateral", ...) is a side mention; a surgery or N stage belongs
to the side mention in its chunk, else the nearest preceding one in its sentence, else the next
one, else (a unilateral note) the one treated side. A side mention after a history cue ("prior",
"previous", "history of", "h/o", "years ago", "remote", "contralateral ... in 2015") up to "now" /
"currently" is history: its facts do not count. "prior"/"previous" alone ("prior left lumpectomy,
now for RT") are history only when another side is current. Negated surgeries and stages ("no
mastectomy", "not node positive", "declined mastectomy", "rather than mastectomy") are handled.
English only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from oncoplan.ctv.notes import SIDES, SideNote, format_note, parse_note
from oncoplan.errors import InputError

SURGERY_WORDS = {"BCS": "breast-conserving surgery", "TM": "mastectomy"}
SURGERY_WORDS_BACK = {v: k for k, v in SURGERY_WORDS.items()}

# Longest first: "partial mastectomy" before "mastectomy".
_BCS = [
    r"breast[- ]?conserv\w*(?: (?:surgery|therapy|treatment|operation))?",
    r"partial mastectomy",
    r"segmental mastectomy",
    r"segmentectomy",
    r"quadrantectomy",
    r"lumpectom(?:y|ies)",
    r"tumou?rectomy",
    r"wide local excision",
    r"wide excision",
    r"bcs|bct|wle",
]
_TM = [
    r"completion mastectomy",
    r"(?:modified )?radical mastectomy",
    r"(?:skin|nipple|areola)[- ]sparing mastectom(?:y|ies)",
    r"(?:total|simple) mastectom(?:y|ies)",
    r"mastectom(?:y|ies)",
    r"mrm|ssm|nsm|tm",
]
_SURGERY_RE = re.compile(
    r"\b(?:(?P<bcs>" + "|".join(_BCS) + r")|(?P<tm>" + "|".join(_TM) + r"))\b",
    re.IGNORECASE,
)
_NEG_BEFORE = re.compile(
    r"\b(?:no|not|without|declined|refused|rather than|instead of|avoid(?:ing|ed)?|deferred|"
    r"not a candidate for|candidate for|considering|considered|offered|discussed|planned|plan(?:ned)? for|"
    r"scheduled for|may need|would need)\b[^,;.]{0,25}$",
    re.IGNORECASE,
)
_NEG_AFTER = re.compile(r"^\W{0,3}(?:was |were |is )?(?:not (?:performed|done)|declined|refused|was deferred)", re.I)

_SIDE_WORD = re.compile(
    r"\b(?P<w>left|right|bilateral(?:ly)?|both (?:breasts|sides|chest walls))\b|"
    r"\b(?P<ab>lt|rt|l|r)\b\.?(?=\s*(?:breast|bcs|bct|wle|lumpectomy|mastectomy|tm|mrm|ssm|nsm|chest|axill|side|"
    r"sided|quadrant|uo|ui|lo|li|sn|slnb|sentinel|-sided|nipple|skin|total|simple|modified|radical|partial|segment|"
    r"quadrantectomy|wide|completion|\)))|"
    r"\((?P<par>l|r|lt|rt)\)",
    re.IGNORECASE,
)
# A side word followed by one of these is about something else (the heart, a limb, a lung).
_NOT_BREAST = re.compile(
    r"^[\s-]*(?:sided\s+)?(?:ventric\w*|atri\w*|arm|hand\w*|leg|hip|knee|foot|ankle|eye|ear|lung|lobe|upper lobe|"
    r"lower lobe|middle lobe|kidney|renal|shoulder|elbow|wrist|ovar\w*|adnex\w*|salping\w*|oophor\w*|"
    r"pulmonary|hilar|pleural|iv\b|port|jugular|femoral|internal jugular|thyroid|adrenal|hepatic|away|here|there)",
    re.IGNORECASE,
)
_HISTORY = re.compile(
    r"\b(?:history of|h/o|hx of|pmh|years? ago|yrs? ago|remote|previously treated|previously irradiated|"
    r"in the past|prior|previous(?:ly)?|former|contralateral)\b",
    re.IGNORECASE,
)
_AGO = re.compile(r"\b(?:years?|yrs?|decades?) ago\b", re.IGNORECASE)
_WEAK_HISTORY = re.compile(r"^(?:prior|previous(?:ly)?)$", re.IGNORECASE)
_CURRENT = re.compile(r"\b(?:now|currently|presently|this time|today|new|newly|current)\b", re.IGNORECASE)
_PROPHYLACTIC = re.compile(r"\b(?:prophylactic|risk[- ]reducing|contralateral prophylactic)\b", re.IGNORECASE)

_N_RE = re.compile(
    r"(?:(?<![A-Za-z])|(?<=T[0-4])|(?<=T[0-4][a-d])|(?<=Tis)|(?<=\)))"
    r"(?P<pre>y?[cp]?|[cp]?y)N(?P<st>[0-3xX])(?P<mi>\s?\(?mi\)?)?(?P<sub>[a-c])?(?P<i>\s?\((?:i|mol)[+-]\)|\(sn\))?"
    r"(?=M[0-1xX]|[^A-Za-z0-9]|$)",
)
_T_RE = re.compile(r"(?<![A-Za-z])(?:y?[cpr]?|[cp]?y)T(?P<t>is|[0-4])(?P<sub>[a-d]|mi)?(?=N|M|\b|\()")
_COUNT_RE = re.compile(
    r"\b(?P<pos>\d{1,2})\s*(?:/|of|out of)\s*(?P<tot>\d{1,2})\b[^,;.]{0,30}?"
    r"\b(?:(?:sentinel |axillary |lymph )*(?:nodes?|ln|lns|slns?)\b[^,;.]{0,12}?\b(?:positive|involved|pos)\b|"
    r"positive\b[^,;.]{0,15}\b(?:nodes?|ln|lns|slns?)\b|(?:nodes?|ln|lns|slns?)\s*\+)",
    re.IGNORECASE,
)
_COUNT_RE2 = re.compile(
    r"\b(?P<pos>\d{1,2}|no|none|zero|one|two|three|four|five)\s+(?:(?:positive|involved)\s+)?"
    r"(?:of|out of|/)\s+(?P<tot>\d{1,2})\s+(?:sentinel |axillary |lymph )*(?:nodes?|lns?|slns?)\s+"
    r"(?:were |was )?(?:positive|involved)",
    re.IGNORECASE,
)
_NODE_NEG = re.compile(
    r"\b(?:not|non)[- ]node[- ]positive\b|\bnode[- ]?negative\b|\bnodes? (?:were |was |are )?negative\b|"
    r"\b(?:sentinel (?:lymph )?nodes?|slnb?|sln biopsy|axillary nodes?|lymph nodes?)\s+(?:were |was |are |is )?"
    r"(?:negative|benign|clear|free of (?:tumou?r|disease|metastas[ie]s))\b|"
    r"\bno (?:evidence of )?(?:nodal|lymph node|axillary|regional nodal) "
    r"(?:involvement|disease|metastas[ie]s|spread)\b|"
    r"\bno (?:positive|involved) (?:lymph )?nodes\b|\bnegative (?:sentinel )?(?:lymph )?nodes?\b|\bN-(?!\w)",
    re.IGNORECASE,
)
_NODE_POS = re.compile(
    r"(?<!not )(?<!non-)(?<!non )\bnode[- ]?positive\b|\bN\+|\bpositive (?:sentinel |axillary )?(?:lymph )?nodes?\b",
    re.IGNORECASE,
)
_MICRO = re.compile(r"\bmicro[- ]?metasta\w*", re.IGNORECASE)
_ITC = re.compile(r"\bisolated tumou?r cells\b|\bitcs?\b", re.IGNORECASE)
_WORD_NUM = {"no": 0, "none": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@dataclass
class _Mention:
    sides: tuple[str, ...]
    start: int
    chunk: int
    history: bool
    weak: bool
    prophylactic: bool


@dataclass
class _Fact:
    kind: str  # "surgery" | "n" | "t" | "count"
    value: str | int
    start: int
    chunk: int
    sentence: int
    completion: bool = False


@dataclass
class _Side:
    surgeries: set[str] = field(default_factory=set)
    completion: bool = False
    n: set[str] = field(default_factory=set)
    t: set[str] = field(default_factory=set)
    counts: list[int] = field(default_factory=list)
    positive_phrases: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class NoteReading:
    """What the reader understood: the side records, and the Table 5 note the model hears."""

    sides: tuple[SideNote, ...]
    template: bool  # the note was already in the Table 5 form

    @property
    def note(self) -> str:
        return format_note(list(self.sides))

    @property
    def interpretation(self) -> str:
        return interpretation(self.sides)

    def to_dict(self) -> dict:
        return {
            "interpretation": self.interpretation,
            "model_note": self.note,
            "template_note": self.template,
            "sides": [
                {"side": s.side, "surgery": s.surgery, "n_stage": s.n_stage, "t_stage": s.t_stage} for s in self.sides
            ],
        }


def interpretation(sides) -> str:
    """ "left, breast-conserving surgery, N1"; bilateral: "left: ...; right: ..."."""
    ordered = sorted(sides, key=lambda s: SIDES.index(s.side))
    if len(ordered) == 1:
        s = ordered[0]
        return f"{s.side}, {SURGERY_WORDS[s.surgery]}, {s.n_stage}"
    return "; ".join(f"{s.side}: {SURGERY_WORDS[s.surgery]}, {s.n_stage}" for s in ordered)


def _normalise(text: str) -> str:
    text = str(text).replace("\u2013", "-").replace("\u2014", "-").replace("\u2011", "-").replace("\u00a0", " ")
    text = re.sub(r"\bs/p\b|\bstatus post\b", "status-post", text, flags=re.IGNORECASE)
    return text


def _sentences(text: str) -> list[tuple[int, str]]:
    """(offset, sentence): cut at ';', new lines, and '.' followed by a space or the end (not '2.5')."""
    out, start = [], 0
    for m in re.finditer(r";|\n|(?<![RrLl]t)(?<!\b[LlRr])(?<!\bDr)(?<!\bvs)\.(?=\s|$)|:\s*(?=\n)", text):
        out.append((start, text[start : m.start()]))
        start = m.end()
    out.append((start, text[start:]))
    return [(o, s) for o, s in out if s.strip()]


# Where a sentence splits into chunks (a side's mention binds to the fields in its chunk) and into clauses
# (the scope of a history cue such as "previously"; "now" and "currently" end it).
CHUNK_BREAKS = re.compile(r",|\(|\)|\bbut\b|\bwith\b|\band now\b|\bnow\b|\bthen\b", re.IGNORECASE)
CLAUSE_BREAKS = re.compile(r",|\bbut\b|\band now\b|\bnow\b|\bcurrently\b", re.IGNORECASE)


def _split(sentence: str, breaks: re.Pattern[str]) -> list[tuple[int, int]]:
    """(start, end) spans of `sentence`, each starting at a match of `breaks` (the first at 0)."""
    bounds, start = [], 0
    for m in breaks.finditer(sentence):
        bounds.append((start, m.start()))
        start = m.start()
    bounds.append((start, len(sentence)))
    return bounds


def _chunks(sentence: str) -> list[tuple[int, int]]:
    return _split(sentence, CHUNK_BREAKS)


def _history_at(sent: str, clauses, cues, resets, pos: int) -> tuple[bool, bool]:
    """(is the side mention at `pos` history, only a weak cue): a cue before it in its clause, not reset by
    "now"; or "years ago" after it in its clause."""
    a, b = clauses[_chunk_of(clauses, pos)]
    last = [(p, w) for p, w in cues if a <= p < pos and not any(p < r < pos for r in resets)]
    if last:
        return True, bool(_WEAK_HISTORY.match(last[-1][1]))
    return bool(_AGO.search(sent[pos:b])), False


def _clauses(sentence: str) -> list[tuple[int, int]]:
    return _split(sentence, CLAUSE_BREAKS)


def _chunk_of(bounds: list[tuple[int, int]], pos: int) -> int:
    return next(i for i, (a, b) in enumerate(bounds) if a <= pos < b or (i == len(bounds) - 1))


def _negated(sentence: str, start: int, end: int) -> bool:
    before = sentence[max(0, start - 40) : start]
    before = re.split(r"[,;:]|\bbut\b|\bthen\b|\bunderwent\b|\bhad\b|\bchose\b|\bopted\b|\bdid\b", before)[-1]
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(sentence[end:]))


def _n_value(m: re.Match) -> str:
    st = m.group("st").lower()
    if st == "x":
        return "Nx"
    if st == "1" and (m.group("mi") or "").strip():
        return "N1mi"
    return f"N{st}"


def _from_count(pos: int) -> str:
    return "N0" if pos == 0 else "N1" if pos <= 3 else "N2" if pos <= 9 else "N3"


def read_note(text: str, where: str = "note") -> NoteReading:
    """Read a free-text (or Table 5) note; an InputError naming what is missing or contradictory."""
    if not str(text).strip():
        raise InputError(f"{where}: empty clinical note")
    try:  # the template the model was trained on reads as itself
        return NoteReading(tuple(parse_note(text, where)), template=True)
    except InputError:
        pass
    text = _normalise(text)
    mentions: list[tuple[int, _Mention]] = []  # (sentence index, mention)
    facts: list[_Fact] = []
    history_sentences: set[int] = set()
    for si, (_, sent) in enumerate(_sentences(text)):
        bounds = _chunks(sent)
        # history scope: from a cue to a "now"-like word (or the sentence end)
        cues = [(m.start(), m.group(0)) for m in _HISTORY.finditer(sent)]
        resets = [m.start() for m in _CURRENT.finditer(sent)]

        clauses = _clauses(sent)  # a history cue reaches to the next comma / "now" / "but", through parentheses
        if cues:
            history_sentences.add(si)

        for m in _SIDE_WORD.finditer(sent):
            word = (m.group("w") or m.group("ab") or m.group("par") or "").lower()
            if _NOT_BREAST.match(sent[m.end() :]):
                continue
            if word.startswith("bilateral") and re.match(
                r"^\s*(?:salping|oophor|mammo|pulmonary|lung|pleural|hilar|adrenal|renal|ovar)", sent[m.end() :], re.I
            ):
                continue
            sides = (
                ("left", "right")
                if word.startswith(("bilateral", "both"))
                else (("left",) if word.startswith("l") else ("right",))
            )
            hist, weak = _history_at(sent, clauses, cues, resets, m.start())
            chunk = _chunk_of(bounds, m.start())
            a, b = bounds[chunk]
            proph = bool(_PROPHYLACTIC.search(sent[a:b]))
            mentions.append((si, _Mention(sides, m.start(), chunk, hist, weak, proph)))
        for m in _SURGERY_RE.finditer(sent):
            if _negated(sent, m.start(), m.end()):
                continue
            kind = "BCS" if m.group("bcs") else "TM"
            completion = m.group(0).lower().startswith("completion")
            facts.append(_Fact("surgery", kind, m.start(), _chunk_of(bounds, m.start()), si, completion))
        for m in _N_RE.finditer(sent):
            facts.append(_Fact("n", _n_value(m), m.start(), _chunk_of(bounds, m.start()), si))
        for m in _T_RE.finditer(sent):
            t_stage = "T" + m.group("t") + (m.group("sub") or "")
            facts.append(_Fact("t", t_stage, m.start(), _chunk_of(bounds, m.start()), si))
        counted = []
        for m in list(_COUNT_RE.finditer(sent)) + list(_COUNT_RE2.finditer(sent)):
            if any(a <= m.start() < b for a, b in counted):
                continue
            counted.append((m.start(), m.end()))
            raw = m.group("pos").lower()
            pos = _WORD_NUM[raw] if raw in _WORD_NUM else int(raw)
            if pos > int(m.group("tot")):
                raise InputError(f"{where}: node count {m.group(0)!r} has more positive nodes than examined")
            facts.append(_Fact("count", pos, m.start(), _chunk_of(bounds, m.start()), si))
        for m in _NODE_NEG.finditer(sent):
            facts.append(_Fact("n", "N0", m.start(), _chunk_of(bounds, m.start()), si))
        for m in _NODE_POS.finditer(sent):
            if not any(f.kind == "n" and f.sentence == si and f.start <= m.start() < f.start + 40 for f in facts):
                facts.append(_Fact("pos", "positive", m.start(), _chunk_of(bounds, m.start()), si))
        for m in _MICRO.finditer(sent):
            facts.append(_Fact("micro", "N1mi", m.start(), _chunk_of(bounds, m.start()), si))
        for m in _ITC.finditer(sent):
            facts.append(_Fact("itc", "N0", m.start(), _chunk_of(bounds, m.start()), si))

    if not mentions:
        raise InputError(f"{where}: clinical note names no side (left, right or bilateral): cannot tell the target")
    current = [(si, mm) for si, mm in mentions if not mm.history and not mm.prophylactic]
    if not current:  # "prior left lumpectomy, now for RT": weak history alone is the case itself
        current = [(si, mm) for si, mm in mentions if mm.history and mm.weak and not mm.prophylactic]
        for _, mm in current:
            mm.history = False
    treated = sorted({s for _, mm in current for s in mm.sides}, key=SIDES.index)
    if not treated:
        raise InputError(f"{where}: clinical note names sides only as history or prophylactic: which side is treated?")
    history_sides = {s for _, mm in mentions if mm.history for s in mm.sides} - set(treated)

    records = {s: _Side() for s in treated}
    for f in facts:
        owner = _owner(f, mentions)
        if owner is not None and (owner.history or owner.prophylactic):
            continue
        if owner is None:
            if len(treated) > 1:
                if f.kind in ("t", "itc"):
                    continue
                raise InputError(
                    f"{where}: bilateral note: cannot tell which side {_describe(f)} belongs to "
                    "(write it beside its side, e.g. 'left: BCS, pN1; right: mastectomy, pN0')"
                )
            if history_sides and f.sentence in history_sentences and f.kind in ("surgery", "n", "count"):
                # a fact in a sentence that names no side but speaks of history, in a note with a history side
                raise InputError(
                    f"{where}: cannot tell whether {_describe(f)} belongs to the {treated[0]} side or the "
                    f"{'/'.join(sorted(history_sides))} side's history: name its side"
                )
            sides = treated
        else:
            sides = [s for s in owner.sides if s in records]
        for s in sides:
            r = records[s]
            if f.kind == "surgery":
                r.surgeries.add(str(f.value))
                r.completion |= f.completion
            elif f.kind == "n":
                r.n.add(str(f.value))
            elif f.kind == "t":
                r.t.add(str(f.value))
            elif f.kind == "count":
                r.counts.append(int(f.value))
            else:
                r.positive_phrases.add(f.kind)
    return NoteReading(tuple(_side_note(s, records[s], where) for s in treated), template=False)


def _describe(f: _Fact) -> str:
    return {
        "surgery": f"the surgery ({SURGERY_WORDS.get(str(f.value), f.value)})",
        "n": f"the N stage {f.value}",
        "count": "the node count",
        "pos": "'node positive'",
        "micro": "the micrometastasis",
    }.get(f.kind, f"the {f.kind}")


def _owner(f: _Fact, mentions: list[tuple[int, _Mention]]) -> _Mention | None:
    same = [mm for si, mm in mentions if si == f.sentence]
    in_chunk = [mm for mm in same if mm.chunk == f.chunk]
    if in_chunk:
        return min(in_chunk, key=lambda mm: abs(mm.start - f.start))
    same = [mm for mm in same if len(mm.sides) == 1]  # "bilateral" owns only its own chunk's facts
    before = [mm for mm in same if mm.start < f.start]
    if before:
        return max(before, key=lambda mm: mm.start)
    after = [mm for mm in same if mm.start > f.start]
    if after:
        return min(after, key=lambda mm: mm.start)
    return None


def _side_note(side: str, r: _Side, where: str) -> SideNote:
    surgeries = r.surgeries
    if r.completion:
        surgeries = {"TM"}
    if not surgeries:
        raise InputError(
            f"{where}: no surgery found for the {side} side (expected e.g. lumpectomy/BCS/WLE or mastectomy)"
        )
    if len(surgeries) > 1:
        raise InputError(
            f"{where}: contradictory surgery for the {side} side: both breast-conserving surgery and mastectomy"
        )
    n = set(r.n)
    micro, itc = "micro" in r.positive_phrases, "itc" in r.positive_phrases
    if "Nx" in n:
        raise InputError(f"{where}: N stage for the {side} side is Nx (not assessed): give the nodal stage")
    if len(n) > 1:
        raise InputError(
            f"{where}: contradictory N stages for the {side} side ({', '.join(sorted(n))}): "
            "state the one the CTV should follow"
        )
    if not n:
        if r.counts:
            if len(set(r.counts)) > 1:
                raise InputError(f"{where}: two different node counts for the {side} side")
            pos = r.counts[0]
            n = {"N1mi" if micro and 0 < pos <= 3 else _from_count(pos)}
        elif micro:
            n = {"N1mi"}
        elif itc and "pos" not in r.positive_phrases:
            n = {"N0"}
        elif "pos" in r.positive_phrases:
            raise InputError(f"{where}: the {side} side is node positive but no N stage or node count is given")
        else:
            raise InputError(f"{where}: no N stage found for the {side} side (e.g. pN0, N1, node negative, 2/12 nodes)")
    stage = n.pop()
    if r.counts and len(set(r.counts)) == 1 and (r.counts[0] == 0) != (stage == "N0"):
        raise InputError(f"{where}: the {side} side's N stage {stage} disagrees with its node count")
    if micro and stage != "N1mi":
        raise InputError(f"{where}: the {side} side is {stage} but a micrometastasis is mentioned: state the N stage")
    t = next(iter(r.t)) if len(r.t) == 1 else None
    surgery = next(iter(surgeries))
    return SideNote(side, surgery, stage, t)


def sides_mentioned(text: str) -> set[str]:
    """The breast sides a note names at all (history included), as the reader finds side words."""
    text = _normalise(text)
    found: set[str] = set()
    for m in _SIDE_WORD.finditer(text):
        if _NOT_BREAST.match(text[m.end() :]):
            continue
        word = (m.group("w") or m.group("ab") or m.group("par") or "").lower()
        found |= set(SIDES) if word.startswith(("bilateral", "both")) else {"left" if word.startswith("l") else "right"}
    return found


def reading_from_fields(entries: object, where: str = "note") -> NoteReading:
    """Side records given as fields (an LLM reader's answer: ``[{"side", "surgery", "n_stage", "t_stage"}]``),
    held to the rules the text reader applies: the note vocabulary (side, surgery, N stage, T stage), one
    surgery and one N stage per side (two given for one side is a contradiction), Nx refused. InputError."""
    from oncoplan.ctv.notes import _n_stage, _side, _surgery

    if not isinstance(entries, list) or not entries:
        raise InputError(f"{where}: no side records")
    records: dict[str, _Side] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise InputError(f"{where}: a side record is not an object")
        unknown = set(entry) - {"side", "surgery", "n_stage", "t_stage"}
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        side = _side(str(entry.get("side") or ""), where)
        r = records.setdefault(side, _Side())
        if entry.get("surgery"):
            surgery = str(entry["surgery"])
            r.surgeries.add(_surgery(SURGERY_WORDS_BACK.get(surgery.lower().strip(), surgery), where))
        if entry.get("n_stage"):
            stage = str(entry["n_stage"]).strip()
            r.n.add("Nx" if re.fullmatch(r"[cpy]{0,2}N[xX]", stage) else _n_stage(stage, where))
        if entry.get("t_stage"):
            t = re.fullmatch(r"[cpyr]{0,2}(T(?:is|[0-4])(?:[a-d]|mi)?)", str(entry["t_stage"]).strip(), re.IGNORECASE)
            if not t:
                raise InputError(f"{where}: unknown T stage {entry['t_stage']!r}")
            r.t.add(t.group(1)[0].upper() + t.group(1)[1:])
    return NoteReading(tuple(_side_note(s, records[s], where) for s in SIDES if s in records), template=False)

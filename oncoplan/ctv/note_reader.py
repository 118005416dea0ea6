"""Free-text clinical notes -> the fields the CTV depends on (side(s), surgery and N stage per side).

Rules, offline, no model: a radiation oncologist's note (a referral letter, a text SR, "left
breast, BCS, N1", "s/p L lumpectomy, pT1c pN1a (2/12)") is read into `SideNote`s, which are
rendered into the seed's Table 5 note (`notes.format_note`) that the shipped LLMSeg model was
trained on. The model therefore hears exactly what the reader understood, and that is what the
outputs say ("interpreted as: ...").

Why rules and not a model: the fields are few and closed (two sides, two surgery classes, five N
stages); every decision can be tested and explained in one line; a wrong field moves the target to
the wrong breast, so anything the rules do not settle is refused, never guessed:
- no side, or no current side (only history); a capital "RT" before a breast, side or surgery word ("RT
  breast", "RT lumpectomy", "RT chest wall"), which may mean right or radiotherapy, where reading it as one or
  the other changes the answer;
- a side without a surgery, or with both breast-conserving surgery and mastectomy (a
  "completion mastectomy", or a mastectomy after "then" / "went on to" / "proceeded to" following a
  lumpectomy, is read as mastectomy), or with a surgery done and one of the other class still planned or
  discussed ("s/p lumpectomy, then mastectomy was advised");
- a side without an N stage, or with two different ones (e.g. cN1 before and ypN0 after
  neoadjuvant chemotherapy: the CTV decision is the physician's), or an explicit stage that
  disagrees with the node count's positivity, or a count that may be a date ("ALND 2/10", "SLNB 3/5")
  where reading it as one or the other changes the answer;
- a fact (surgery, N stage) that cannot be attributed to one side of a bilateral note, or that sits
  in a history or family-history clause naming no side ("Mother had a mastectomy").

How a note is read: sentences (". ", ";", new lines) are cut into comma chunks; each side word ("left", "L
breast", "left-sided", "LUOQ", "bilateral", ...; "RT" in capitals is radiotherapy, "right" too before a breast
word: see above) is a side mention; a surgery or N stage belongs to the side mention in its chunk, else the
nearest preceding one in its sentence, else the next one, else (a unilateral note) the one treated side; a
"bilateral" / "both breasts" owns only the facts of its own chunk, and the surgery of its own clause ("both
breasts treated with lumpectomy"). A side mention after a history cue ("prior", "previous", "history of",
"h/o", "remote", "contralateral ... in 2015", a relative: "mother", "sister", "FHx") up to "now" / "currently"
is history, as is one followed in its clause by "years ago" or by radiotherapy already given ("and RT 2016",
"received RT"; not "RT 2025 planned", "received RT education"): its facts do not count. "prior"/"previous"
alone ("prior left lumpectomy, now for RT") are history only when another side is current. A side named only
by "bilateral"/"both sides" or in a benign clause ("Left breast: MRI negative"), whose own mentions are all
history, prophylactic or benign and own no fact, is not a target. Negated, conditional or not yet done
surgeries and stages ("no mastectomy", "not node positive", "declined mastectomy", "rather than mastectomy",
"mastectomy planned", "then mastectomy was considered", "may require a mastectomy", a surgery after an "if" in
its sentence that is not "asked if", or before one in its clause) do not count; a status word reaches the
surgery right after it, or past a comma unless another treatment follows it ("s/p mastectomy, planned PMRT"
is a mastectomy done; "mastectomy, planned for 5/2026" is not). Node counts: "2/12 nodes positive", "3/15 LN+", "1 of 3
SLN with micromets", "Eleven of nineteen nodes involved" (words up to twenty), "0/2 SLN", "SLNB 0/2"
(positive/examined; not after "not", "if", "fewer than", "level": "not one of 12 nodes"; a count of nodes the
patterns do not read, in a sentence that says some are positive and gives no stage, is refused); "further" /
"non-sentinel" nodes add to the
first count; a count of nodes with isolated tumour cells is not a positive count; dates ("10/03/2025") are not
counts; a fraction after an axillary procedure with no ':' and no node word ("SLNB 3/5", "ALND 4/9") that may
be a day/month, month/day or month/two-digit year is read both ways (0/n is a count: there is no day or month
0). One-letter typos of lumpectomy/mastectomy/quadrantectomy ("lumpectmy", "mastecomy") and swapped letters of
a side ("rigth") are read as the word; "Lft"/"Rgt" (not "LFT", liver function tests) before a breast or surgery
word are sides; in a note typed all in lower case, "pn0" or "ypn1" is a stage. A micrometastasis said to be absent
("no micrometastases", the synoptic "Number with micrometastases: 0" whose value ends the item) is none. English
only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import product

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
# Before the surgery word (in its clause, see `_negated`): not done ("declined mastectomy"), only conditional
# ("may require a mastectomy"), or still to come / only discussed ("planned for mastectomy", "offered mastectomy").
_NEG_BEFORE = re.compile(
    r"\b(?:(?P<no>no|not|without|declined|refused|rather than|instead of|avoid(?:ing|ed)?|deferred|not a candidate for|"
    r"may need|would need|may require|would require)|candidate for|considering|considered|offered|discussed|"
    r"recommend(?:ed|s)?|advised|suggested|planned|plan(?:ned)? for|scheduled for|will (?:need|require|undergo)|"
    r"awaiting|booked for|listed for)\b[^,;.]{0,25}$",
    re.IGNORECASE,
)
# "requires"/"needs" govern only the surgery right after them ("needs a left mastectomy"), not one further on
# ("requires PMRT (mastectomy 3/2024)").
_NEEDS = re.compile(
    r"\b(?:requires?|requiring|needs?|needing)\s+(?:(?:a|an|the)\s+)?(?:(?:left|right|bilateral|lt|rt|l|r)\b[\s-]*)?$",
    re.IGNORECASE,
)
# After the surgery word: not done, or not yet / only discussed ("right mastectomy planned after neoadjuvant
# chemo", "then mastectomy was considered"), the status word right after the word. Past a comma a status word
# followed by another treatment or work-up is about that ("s/p mastectomy, planned PMRT", "mastectomy, pending
# pathology"); any other ("mastectomy, planned for 5/2026", "mastectomy, recommended given multifocality") is
# still about the surgery.
_STATUS = (
    r"(?:was |were |is |has been |had been )?(?:not (?:performed|done|advised|recommended|indicated|required|needed)|"
    r"declined|refused|(?:was )?deferred|"
    r"planned|scheduled|pending|booked|proposed|recommended|advised|suggested|offered|considered|discussed|awaited|"
    r"to follow|to be (?:performed|done|arranged|booked))"
)
_OTHER_TREATMENT = (
    r"(?:(?:for|of)\s+)?(?:(?:adjuvant|neo-?adjuvant|post-?mastectomy|whole[- ]breast|nodal|regional|final|further|"
    r"delayed|immediate)\s+)*"
    r"(?:pmrt|x?rt|radio\w*|radiation|irradiation|wbrt|wbi|apbi|boost|chemo\w*|endocrine|hormon\w*|tamoxifen|"
    r"letrozole|anastrozole|exemestane|ai|herceptin|trastuzumab|reconstruction|expanders?|implants?|path\w*|"
    r"histo\w*|review|results?|genetic\w*|brca|testing|oncotype|mdt|follow-?up|imaging|ct|mri|pet|scans?|"
    r"referral|consult\w*|sim\w*|planning|re-?excision)\b"
)
_NEG_AFTER = re.compile(
    r"^[^\w,;]{0,3}" + _STATUS + r"|^\s*,\s*" + _STATUS + r"(?!\s+" + _OTHER_TREATMENT + ")",
    re.IGNORECASE,
)
# "if"/"unless" before the surgery ("if margins are positive she will need a mastectomy") or after it in its
# clause ("then mastectomy if re-excision margins are positive"); a clause is cut at punctuation and conjunctions.
_CLAUSE_CUT = re.compile(r"[,;:()]|\b(?:and|but|or|so|as|while|because|although|though|whereas|when)\b", re.IGNORECASE)
_IF = re.compile(r"\b(?:if|unless)\b", re.IGNORECASE)
# An "if" after asking, wondering, checking, ... is "whether", not a condition (see `_conditional`).
_ASKED_IF = re.compile(
    r"\b(?:ask\w*|wonder\w*|unsure|sure|uncertain|unclear|know\w*|see|check\w*|question\w*|[ie]nquir\w*)"
    r"(?:\s+(?!(?:and|but|or|so|then)\b)[\w-]+){0,3}\s+if$",
    re.IGNORECASE,
)
_NOT_DONE = re.compile(r"\b(?:not|declined|refused|deferred)\b", re.IGNORECASE)  # in a `_NEG_AFTER` match
# A decision about surgery anywhere in the note ("mastectomy was offered but she declined", "Mastectomy was
# discussed; she opted for WLE"): a discussed surgery is then not done, rather than still to come. Not a decision
# about something else ("Completion mastectomy planned. She declined chemotherapy.").
_CHOSE = re.compile(
    r"\b(?:declined|refused|decided against)\b(?=\s*(?:$|[,;.)]|(?:it|this|that|surgery|further surgery|"
    r"the (?:surgery|operation|procedure))\b))|\binstead\b|"
    r"\b(?:opted|chose|elected|preferred|decided)\b[^,;.]{0,30}?\b(?:" + "|".join(_BCS) + r"|to keep)",
    re.IGNORECASE,
)
# A mastectomy after one of these (in its sentence) followed a lumpectomy: it is the final surgery, as a
# "completion mastectomy" is ("R lumpectomy with close margins and went on to have a R total mastectomy").
_SEQUENCE = re.compile(
    r"\b(?:then|subsequently|later|eventually|ultimately|went on to|proceeded to|followed by|converted to|"
    r"re-?operat\w*)\b[^,;.]{0,30}$",
    re.IGNORECASE,
)

_SIDE_WORD = re.compile(
    r"\b(?P<w>left|right|bilateral(?:ly)?|both (?:breasts|sides|chest walls))\b|"
    r"\b(?P<lft>(?-i:[Ll]ft|[Rr]gt))\b(?=\s*(?:breast|chest|axill|sided|-sided|bcs|wle|lumpectomy|mastectomy|"
    r"mrm|ssm|nsm|wide|partial|completion|total|simple|modified|radical)\b)|"
    r"\b(?P<ab>lt|rt|l|r)\b\.?(?=\s*(?:breast|bcs|bct|wle|lumpectomy|mastectomy|tm|mrm|ssm|nsm|chest|axill|side|"
    r"sided|quadrant|uo|ui|lo|li|sn|slnb|sentinel|-sided|nipple|skin|total|simple|modified|radical|partial|segment|"
    r"quadrantectomy|wide|completion|\)))|"
    r"\((?P<par>l|r|lt|rt)\)|"
    r"\b(?P<q>[lr])(?:uo|ui|lo|li)q\b",  # LUOQ, RLIQ: a breast quadrant (RUQ, LLQ are the abdomen's)
    re.IGNORECASE,
)
# A capital "RT" followed by one of these (or a surgery word) may be "right" as well as radiotherapy.
_RT_BEFORE = re.compile(
    r"^[\s-]*(?:breasts?|chest|axill\w*|nipple\w*|quadrant\w*|[ul][io]q|sentinel|sn|slnb?|sided?(?![\s-]*effects?))\b",
    re.IGNORECASE,
)
# A side word followed by one of these is about something else (the heart, a limb, a lung).
_NOT_BREAST = re.compile(
    r"^[\s-]*(?:sided\s+)?(?:ventric\w*|atri\w*|arm|hand\w*|leg|hip|knee|foot|ankle|eye|ear|lung|lobe|upper lobe|"
    r"lower lobe|middle lobe|kidney|renal|shoulder|elbow|wrist|ovar\w*|adnex\w*|salping\w*|oophor\w*|"
    r"pulmonary|hilar|pleural|side[\s-]*effects?|iv\b|port|jugular|femoral|internal jugular|thyroid|adrenal|hepatic|"
    r"away|here|there)",
    re.IGNORECASE,
)
# A relative's cancer is family history, not the patient's ("FHx: mother - bilateral breast ca").
_HISTORY = re.compile(
    r"\b(?:history of|h/o|hx of|pmh|years? ago|yrs? ago|remote|previously treated|previously irradiated|"
    r"in the past|prior|previous(?:ly)?|former|contralateral|family history|fhx?|mother|mum|mom|father|"
    r"sister|brother|daughter|aunt|grandmother|cousin|niece|maternal|paternal|relatives?)\b",
    re.IGNORECASE,
)
# After a side mention in its clause: that side is history ("years ago"), or was already irradiated ("left
# lumpectomy and RT 2016", "received RT"): an RT referral's target is not a breast already treated with RT. Not
# radiotherapy still to come ("RT 2025 planned", "planned RT 2026") or a radiotherapy-something ("received RT
# education today").
_AGO = re.compile(
    r"\b(?:years?|yrs?|decades?) ago\b|"
    r"(?P<plan>\b(?:planned|plan for|scheduled|booked|awaiting)\s+(?:adjuvant\s+|whole[- ]breast\s+)?)?"
    r"\b(?:x?rt|radiotherapy|radiation)\s*\(?(?:in\s+)?(?:19|20)\d\d\b"
    r"(?P<plan_after>\s*\)?\s*(?:is |was )?(?:planned|scheduled|booked|pending|proposed|due|"
    r"to (?:start|begin|commence)|start\w*))?|"
    r"\b(?:received|completed)\s+(?:adjuvant\s+|whole[- ]breast\s+)?(?:x?rt|radiotherapy|radiation)\b"
    r"(?![\s-]+(?:education|teaching|information|consent|consult\w*|planning|simulation|sim|ct|referral|leaflets?|"
    r"booklets?|appointments?|review|clinic|nurse|discussion|counsel\w*|instructions?|pack)\b)",
    re.IGNORECASE,
)
_WEAK_HISTORY = re.compile(r"^(?:prior|previous(?:ly)?)$", re.IGNORECASE)
_CURRENT = re.compile(r"\b(?:now|currently|presently|this time|today|new|newly|current)\b", re.IGNORECASE)
_PROPHYLACTIC = re.compile(r"\b(?:prophylactic|risk[- ]reducing|contralateral prophylactic)\b", re.IGNORECASE)
# A side mention in a clause that is benign or imaging only ("Left breast: screening MRI negative") and names
# no cancer is not a target, unless it owns a surgery or stage.
_BENIGN = re.compile(
    r"\b(?:benign|normal|unremarkable|no (?:evidence of )?(?:malignancy|disease|abnormalit\w+)|bi-?rads ?[12]|"
    r"(?:mri|mammo\w*|ultrasound|imaging)\s+(?:was |is )?(?:negative|clear|normal|unremarkable)|cysts?|"
    r"fibroadenomas?)\b",
    re.IGNORECASE,
)
_CANCER = re.compile(r"\b(?:cancer|carcinoma|ca|idc|ilc|dcis|tumou?rs?|mass|malignant)\b", re.IGNORECASE)

_N_RE = re.compile(
    r"(?:(?<![A-Za-z])|(?<=T[0-4])|(?<=T[0-4][a-d])|(?<=Tis)|(?<=\)))"
    r"(?P<pre>y?[cp]?|[cp]?y)N(?P<st>[0-3xX])(?P<mi>\s?\(?mi\)?)?(?P<sub>[a-c])?(?P<i>\s?\((?:i|mol)[+-]\)|\(sn\))?"
    r"(?=M[0-1xX]|[^A-Za-z0-9]|$)",
)
_T_RE = re.compile(r"(?<![A-Za-z])(?:y?[cpr]?|[cp]?y)T(?P<t>is|[0-4])(?P<sub>[a-d]|mi)?(?=N|M|\b|\()")
_NUMBER_WORDS = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"),
]
_WORD_NUM = {"no": 0, "none": 0} | {w: i for i, w in enumerate(_NUMBER_WORDS)}
_WORDS = "|".join(sorted(_WORD_NUM, key=len, reverse=True))  # longest first: "seventeen" before "seven"
# A count's number in digits or words, not the tail of a compound ("twenty-six", "twenty six": not "six").
_COUNT_NUMBER = r"(?<!-)(?<!ty )\b(?:\d{1,2}|" + _WORDS + ")"


def _number(word: str) -> int:
    """A node count written in digits or in words ("Eleven of nineteen nodes involved")."""
    word = word.lower()
    return _WORD_NUM[word] if word in _WORD_NUM else int(word)


# Node counts are positive/examined. A fraction inside a date ("10/03/2025", "1/2/25") is not one.
_NODE = r"(?:nodes?|lns?|slns?|sns?)"
_POSITIVE = r"(?:\b(?:positive|involved|pos|(?:micro|macro)-?met\w*|metasta\w*|mets?)\b|\+(?:ve\b)?)"
_FRACTION = r"(?<![\d/.])(?P<pos>\d{1,2})\s*/\s*(?P<tot>\d{1,2})(?!\d|[/.]\d)"
_COUNT_RE = re.compile(
    r"(?<![\d/.])\b(?P<pos>\d{1,2})\s*(?:/|of|out of)\s*(?P<tot>\d{1,2})(?!\d|[/.]\d)[^,;.]{0,30}?"
    rf"\b(?:(?:sentinel |axillary |lymph )*{_NODE}\b(?:(?!\b(?:no|not|without|free|negative)\b)[^,;.]){{0,12}}?"
    rf"{_POSITIVE}|positive\b[^,;.]{{0,15}}\b{_NODE}\b|{_NODE}\s*\+)",
    re.IGNORECASE,
)
_COUNT_RE2 = re.compile(
    rf"(?P<pos>{_COUNT_NUMBER})\s+(?:(?:positive|involved)\s+)?(?:of|out of|/)\s+(?P<tot>{_COUNT_NUMBER})\s+"
    r"(?:further |additional |non-?sentinel |other |sentinel |axillary |lymph )*(?:nodes?|lns?|slns?)\s+"
    r"(?:were |was )?(?:positive|involved)",
    re.IGNORECASE,
)
# Before a count, words that make it no count of positive nodes: negated, conditional, a bound, an axillary level.
_NOT_A_COUNT = re.compile(
    r"\b(?:not|no|if|unless|whether|fewer than|less than|more than|over|under|up to|at least|level)\s+"
    r"(?:a single\s+)?$",
    re.IGNORECASE,
)
# "2 of 4 sentinel nodes", "two of four axillary nodes": a count of nodes; one that no count pattern read, in a
# sentence that says some nodes are positive, is refused (the positives may be more than the counts read).
_COUNT_LIKE = re.compile(
    rf"(?<![\d/.]){_COUNT_NUMBER}\s+(?:of|out of)\s+{_COUNT_NUMBER}\s+(?:[a-z-]+\s+){{0,2}}(?:nodes?|lns?|slns?)\b",
    re.IGNORECASE,
)
_POSITIVE_RE = re.compile(_POSITIVE, re.IGNORECASE)
_NEGATIVE_AFTER = r"(?!\s*(?:were |was |are |is )?(?:negative|benign|clear|free|-ve|without|no\b))"
# "0/2 SLN", "3/15 further nodes": a fraction before a node word is a count without "positive".
_COUNT_BARE = re.compile(
    rf"{_FRACTION}\s*(?:(?:further|additional|non-?sentinel|other|sentinel|axillary|lymph)\s+)*{_NODE}\b"
    + _NEGATIVE_AFTER,
    re.IGNORECASE,
)
# "SLNB 0/2", "Lymph nodes: 0/3", "ALND: 3/15": a fraction after a node word or axillary procedure. Without ':'
# or '=' between them, "ALND 2/10" may be a month/year: such a count is read both ways (`_maybe_date`, `_settle`).
_COUNT_AFTER = re.compile(
    r"\b(?:slnb?|snb|sln biopsy|sentinel (?:lymph )?node biopsy|alnd|anc|axc|axillary (?:lymph node )?"
    r"(?:dissection|clearance)|(?:(?:sentinel|axillary|lymph|further|additional|non-?sentinel)\s+)*" + _NODE + r")"
    r"\s*(?P<sep>[:=(-])?\s*" + _FRACTION + _NEGATIVE_AFTER,
    re.IGNORECASE,
)
_FURTHER = re.compile(r"\b(?:further|additional|non-?sentinel|more|other)\b", re.IGNORECASE)
_NODE_NEG = re.compile(
    r"\b(?:not|non)[- ]node[- ]positive\b|\bnode[- ]?negative\b|\bnodes? (?:were |was |are )?negative\b|"
    r"\b(?:sentinel (?:lymph )?nodes?|slnb?|sln biopsy|axillary nodes?|lymph nodes?)\s+(?:were |was |are |is )?"
    r"(?:negative|benign|clear|free of (?:tumou?r|disease|metastas[ie]s))\b|"
    r"\bno (?:evidence of )?(?:nodal|lymph node|axillary|regional nodal) "
    r"(?:involvement|disease|metastas[ie]s|spread)\b|"
    r"\bno (?:positive|involved) (?:lymph )?nodes\b|\bnegative (?:sentinel )?(?:lymph )?nodes?\b|\bN-(?!\w)|"
    r"\bnodes? (?:were |was )?(?:without|with no) (?:metasta\w*|tumou?r|carcinoma|disease)\b",
    re.IGNORECASE,
)
_NODE_POS = re.compile(
    r"(?<!not )(?<!non-)(?<!non )\bnode[- ]?positive\b|\bN\+|\bpositive (?:sentinel |axillary )?(?:lymph )?nodes?\b",
    re.IGNORECASE,
)
_MICRO = re.compile(r"\bmicro[- ]?met(?:asta\w*|s?\b)", re.IGNORECASE)
_ITC = re.compile(r"\bisolated tumou?r cells\b|\bitcs?\b", re.IGNORECASE)
# A finding said to be absent: "no micrometastases", "negative for micrometastasis", and the synoptic item
# "Number with micrometastases: 0", "Micrometastases: 0/2", ": none" whose value ends the item (not "micromet
# nil ECE", "micrometastasis not identified on H&E but present on IHC", "0 on H&E, 1 on IHC").
_ABSENT_BEFORE = re.compile(
    r"\b(?:no|without|negative for|free of)\s+(?:(?:evidence of|any|definite|definitive|residual|nodal)\s+){0,2}$",
    re.IGNORECASE,
)
_ABSENT_AFTER = re.compile(
    r"^\w*\s*[:=]\s*(?:0(?:\s*/\s*\d{1,2})?|none|nil|absent)\s*(?=[.;,\n](?!\d)|$)", re.IGNORECASE
)


def _absent(m: re.Match, sent: str) -> bool:
    return bool(_ABSENT_BEFORE.search(sent[max(0, m.start() - 40) : m.start()]) or _ABSENT_AFTER.match(sent[m.end() :]))


# Words one edit away (a letter missing, extra, wrong, or two swapped) are read as these; a side word only with
# two letters swapped ("rigth"): one edit of "right" is also "light", "night".
_SPELLED = ("lumpectomy", "mastectomy", "quadrantectomy")


@dataclass
class _Mention:
    sides: tuple[str, ...]
    start: int
    chunk: int
    history: bool
    weak: bool
    prophylactic: bool
    clause: int = 0
    benign: bool = False


@dataclass
class _Fact:
    kind: str  # "surgery" | "pending" (a surgery still to come) | "n" | "t" | "count" | "pos" | "micro" | "itc"
    value: str | int
    start: int
    chunk: int
    sentence: int
    completion: bool = False
    clause: int = 0
    history: bool = False  # in a history / family-history clause (a strong cue)
    further: bool = False  # a count of further nodes, added to the first count
    maybe: str = ""  # a count that may be a date: its text


@dataclass
class _Side:
    surgeries: set[str] = field(default_factory=set)
    completion: bool = False
    n: set[str] = field(default_factory=set)
    t: set[str] = field(default_factory=set)
    counts: list[tuple[int, bool]] = field(default_factory=list)  # (positive nodes, a count of further nodes)
    maybe_counts: list[tuple[int, bool]] = field(default_factory=list)  # counts that may be dates
    maybe_text: list[str] = field(default_factory=list)
    positive_phrases: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)  # surgeries still to come or only discussed


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
    if not re.search(r"[A-Z]", text):  # a note typed in lower case: "lt bcs pn0(i+)" is pN0(i+)
        text = re.sub(r"(?<![\w/.:-])(y?p)n(?=[0-3x](?:[a-c]|mi|\(|\s|[,;.]|$))", r"\1N", text)
    return re.sub(r"[A-Za-z]{4,16}", _spelled, text)


def _spelled(m: re.Match) -> str:
    """A typo of a surgery word (one edit) or of a side word (two letters swapped) -> the word."""
    word = m.group(0).lower()
    for target in _SPELLED:
        if word != target and len(word) >= 8 and _one_edit(word, target):
            return target
    for target in SIDES:
        if word != target and len(word) == len(target) and _one_edit(word, target, swap_only=True):
            return target
    return m.group(0)


def _one_edit(word: str, target: str, swap_only: bool = False) -> bool:
    """`word` is `target` with one letter missing, added or changed, or two neighbours swapped."""
    if len(word) == len(target):
        diff = [i for i, (x, y) in enumerate(zip(word, target, strict=True)) if x != y]
        swapped = len(diff) == 2 and diff[1] == diff[0] + 1 and word[diff[0]] == target[diff[1]]
        swapped = swapped and word[diff[1]] == target[diff[0]]
        return swapped or (len(diff) == 1 and not swap_only)
    if swap_only or abs(len(word) - len(target)) != 1:
        return False
    short, long = sorted((word, target), key=len)
    i = next((k for k, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :]


def _rt_before(m: re.Match, text: str) -> str:
    """The breast, side or surgery word right after a capital "RT" ("RT breast", "RT lumpectomy", "RT chest
    wall"), where "RT" may mean right as well as radiotherapy; "" where it is radiotherapy ("adjuvant RT)", "RT
    total dose", "RT side effects")."""
    if m.group("ab") != "RT":
        return ""
    after = text[m.end("ab") :]
    w = _RT_BEFORE.match(after) or _SURGERY_RE.match(after.lstrip(" -"))
    return w.group(0).strip(" -") if w else ""


def _side_word(m: re.Match, text: str) -> tuple[str, ...] | None:
    """The sides a `_SIDE_WORD` match names, or None where it is not about a breast: the heart or a limb ("left
    ventricle", "right-handed"), bilateral imaging or adnexa, or "RT" in capitals (radiotherapy: "adjuvant
    RT)"; the side is written "Rt", "R" or "right"; where "RT" may be either, `read_note` reads both)."""
    word = next(g for g in (m.group("w"), m.group("lft"), m.group("ab"), m.group("par"), m.group("q")) if g)
    after = text[m.end() :]
    if word == "RT" or _NOT_BREAST.match(after):
        return None
    if word.lower().startswith(("bilateral", "both")):
        if re.match(r"^\s*(?:salping|oophor|mammo|pulmonary|lung|pleural|hilar|adrenal|renal|ovar)", after, re.I):
            return None
        return ("left", "right")
    return ("left",) if word.lower().startswith("l") else ("right",)


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
    """(is the side mention (or fact) at `pos` history, only a weak cue): a cue before it in its clause, not
    reset by "now"; or "years ago" / radiotherapy already given after it in its clause."""
    a, b = clauses[_chunk_of(clauses, pos)]
    last = [(p, w) for p, w in cues if a <= p < pos and not any(p < r < pos for r in resets)]
    if last:
        return True, bool(_WEAK_HISTORY.match(last[-1][1]))
    return any(not (m.group("plan") or m.group("plan_after")) for m in _AGO.finditer(sent[pos:b])), False


def _clauses(sentence: str) -> list[tuple[int, int]]:
    return _split(sentence, CLAUSE_BREAKS)


def _chunk_of(bounds: list[tuple[int, int]], pos: int) -> int:
    return next(i for i, (a, b) in enumerate(bounds) if a <= pos < b or (i == len(bounds) - 1))


def _negated(sentence: str, start: int, end: int) -> str:
    """How the surgery word at `sentence[start:end]` is qualified: "no" (not done, or only if: "declined
    mastectomy", "if margins are involved, then mastectomy"), "pending" (still to come or only discussed:
    "mastectomy planned", "then mastectomy was considered", "needs a mastectomy"), or "" (done). A cue before the
    word reaches to it through at most 25 characters, and no further than "underwent", "had", ..., "after"/"post"
    ("plan for RT after left mastectomy": the mastectomy is done) or an opening parenthesis ("requires PMRT
    (mastectomy 3/2024)")."""
    if _conditional(sentence, start, end):
        return "no"
    before = sentence[max(0, start - 40) : start]
    before = re.split(
        r"[,;:(]|\b(?:but|then|underwent|had|chose|opted|did|after|following|post|status-post)\b", before, flags=re.I
    )[-1]
    if m := _NEG_BEFORE.search(before):
        return "no" if m.group("no") else "pending"
    if _NEEDS.search(before):
        return "pending"
    if m := _NEG_AFTER.search(sentence[end:]):
        return "no" if _NOT_DONE.search(m.group(0)) else "pending"
    return ""


def _conditional(sentence: str, start: int, end: int) -> bool:
    """The surgery at `sentence[start:end]` is only a condition's consequence: an "if"/"unless" before it in its
    sentence ("If margins are positive, (then) mastectomy", "and if margins are involved, mastectomy") or after it
    in its clause ("then mastectomy if re-excision margins are positive"). An "if" that asks ("as she asked if
    she could avoid re-excision, went on to completion mastectomy") is a condition only in the surgery's own
    clause ("she asked if she needs a mastectomy")."""
    head = sentence[:start]
    cuts = [m.end() for m in _CLAUSE_CUT.finditer(head)]
    if _IF.search(head[cuts[-1] if cuts else 0 :]):
        return True
    if any(not _ASKED_IF.search(head[: m.end()]) for m in _IF.finditer(head)):
        return True
    return bool(_IF.search(_CLAUSE_CUT.split(sentence[end:], maxsplit=1)[0]))


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
    # "RT breast IDC s/p RT lumpectomy": right or radiotherapy? Read every way; the note must not care.
    rts = [m for m in _SIDE_WORD.finditer(text) if _rt_before(m, text)]
    if not rts:
        return _read(text, where)
    ambiguity = InputError(
        f"{where}: 'RT' before {_rt_before(rts[0], text)!r} may mean right or radiotherapy: "
        "write 'right' or 'radiotherapy'"
    )
    if len(rts) > 4:
        raise ambiguity
    readings: list[NoteReading | InputError] = []
    for choice in product((False, True), repeat=len(rts)):
        t = text
        for m, right in zip(rts, choice, strict=True):
            t = t[: m.start("ab")] + ("Rt" if right else "RT") + t[m.end("ab") :]
        try:
            readings.append(_read(t, where))
        except InputError as err:
            readings.append(err)
    if all(isinstance(r, NoteReading) for r in readings) and len({r.sides for r in readings}) == 1:
        return readings[0]
    if all(isinstance(r, InputError) for r in readings) and len({str(r) for r in readings}) == 1:
        raise readings[0]
    raise ambiguity


def _read(text: str, where: str) -> NoteReading:
    """Read a normalised free-text note (see the module docstring)."""
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

        fact = partial(_fact_at, (si, sent, bounds, clauses, cues, resets))

        for m in _SIDE_WORD.finditer(sent):
            sides = _side_word(m, sent)
            if sides is None:
                continue
            hist, weak = _history_at(sent, clauses, cues, resets, m.start())
            chunk, clause = _chunk_of(bounds, m.start()), _chunk_of(clauses, m.start())
            a, b = bounds[chunk]
            proph = bool(_PROPHYLACTIC.search(sent[a:b]))
            ca, cb = clauses[clause]
            benign = bool(_BENIGN.search(sent[ca:cb]) and not _CANCER.search(sent[ca:cb]))
            mentions.append((si, _Mention(sides, m.start(), chunk, hist, weak, proph, clause, benign)))
        for m in _SURGERY_RE.finditer(sent):
            kind = "BCS" if m.group("bcs") else "TM"
            negated = _negated(sent, m.start(), m.end())
            if negated == "pending" and not _CHOSE.search(text):  # a surgery still to come: the final one is open
                facts.append(fact("pending", kind, m.start()))
            if negated:
                continue
            completion = m.group(0).lower().startswith("completion") or (
                kind == "TM" and bool(_SEQUENCE.search(sent[max(0, m.start() - 60) : m.start()]))
            )
            facts.append(fact("surgery", kind, m.start(), completion=completion))
        for m in _N_RE.finditer(sent):
            facts.append(fact("n", _n_value(m), m.start()))
        for m in _T_RE.finditer(sent):
            facts.append(fact("t", "T" + m.group("t") + (m.group("sub") or ""), m.start()))
        counted: list[tuple[int, int]] = []
        for rx in (_COUNT_RE, _COUNT_RE2, _COUNT_BARE, _COUNT_AFTER):
            for m in rx.finditer(sent):
                if any(m.start() < b and a < m.end() for a, b in counted):
                    continue
                counted.append((m.start(), m.end()))
                if _NOT_A_COUNT.search(sent[max(0, m.start() - 30) : m.start()]):  # "not one of 12", "if 2 of 3"
                    continue
                pos, tot = _number(m.group("pos")), _number(m.group("tot"))
                maybe = rx is _COUNT_AFTER and _maybe_date(m, sent, pos, tot)
                if pos > tot:
                    if maybe:  # "ALND 12/3": a date
                        continue
                    raise InputError(f"{where}: node count {m.group(0)!r} has more positive nodes than examined")
                near = sent[max(0, m.start() - 30) : m.end() + 20]
                if _ITC.search(near) and not _MICRO.search(near):  # "ITCs in 1/2 SLN": pN0(i+), not positive
                    continue
                # "further" / "non-sentinel" nodes add to the first count ("SLNB 1/2, further 3/10 nodes")
                lead = re.split(r"[,;:(]", sent[max(0, m.start() - 20) : m.start()])[-1]
                further = bool(_FURTHER.search(lead + m.group(0)))
                facts.append(fact("count", pos, m.start(), further=further, maybe=m.group(0) if maybe else ""))
        # a count no pattern read, beside positives and with no stage given (a micromet count is the micro fact's)
        unread_matters = _POSITIVE_RE.search(sent) and not _N_RE.search(sent)
        for m in _COUNT_LIKE.finditer(sent) if unread_matters else ():
            before = sent[max(0, m.start() - 30) : m.start()]
            if _MICRO.search(before) or _ITC.search(before):
                continue
            if not any(m.start() < b and a < m.end() for a, b in counted):
                raise InputError(
                    f"{where}: cannot tell what the node count {m.group(0)!r} counts: "
                    "state the N stage or 'n/N nodes positive'"
                )
        for m in _NODE_NEG.finditer(sent):
            facts.append(fact("n", "N0", m.start()))
        for m in _NODE_POS.finditer(sent):
            if not any(f.kind == "n" and f.sentence == si and f.start <= m.start() < f.start + 40 for f in facts):
                facts.append(fact("pos", "positive", m.start()))
        for m in _MICRO.finditer(sent):
            if not _absent(m, sent):
                facts.append(fact("micro", "N1mi", m.start()))
        for m in _ITC.finditer(sent):
            facts.append(fact("itc", "N0", m.start()))

    if not mentions:
        raise InputError(f"{where}: clinical note names no side (left, right or bilateral): cannot tell the target")
    current = [(si, mm) for si, mm in mentions if not mm.history and not mm.prophylactic]
    if not current:  # "prior left lumpectomy, now for RT": weak history alone is the case itself
        current = [(si, mm) for si, mm in mentions if mm.history and mm.weak and not mm.prophylactic]
        for _, mm in current:
            mm.history = False
    owners = [(f, _owner(f, mentions)) for f in facts]
    treated = [
        s
        for s in sorted({s for _, mm in current for s in mm.sides}, key=SIDES.index)
        if not _not_a_target(s, mentions, owners)
    ]
    if not treated:
        raise InputError(
            f"{where}: clinical note names sides only as history, prophylactic or benign: which side is treated?"
        )
    history_sides = {s for _, mm in mentions if mm.history for s in mm.sides} - set(treated)

    records = {s: _Side() for s in treated}
    for f, owner in owners:
        if owner is not None and (owner.history or owner.prophylactic):
            continue
        if owner is None and f.kind == "pending" and (len(treated) > 1 or f.sentence in history_sentences):
            continue  # a planned surgery of no clear side only adds a refusal: left out where its side is unclear
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
            if f.history and f.kind not in ("t", "itc"):
                # "Mother had a mastectomy for breast cancer": a history/family clause that names no side
                raise InputError(
                    f"{where}: cannot tell whether {_describe(f)} belongs to the {treated[0]} side or to a "
                    "history or family history: name its side"
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
            elif f.kind == "pending":
                r.pending.add(str(f.value))
            elif f.kind == "count" and f.maybe:
                r.maybe_counts.append((int(f.value), f.further))
                r.maybe_text.append(f.maybe)
            elif f.kind == "count":
                r.counts.append((int(f.value), f.further))
            else:
                r.positive_phrases.add(f.kind)
    return NoteReading(tuple(_settle(s, records[s], where) for s in treated), template=False)


def _maybe_date(m: re.Match, sent: str, pos: int, tot: int) -> bool:
    """A `_COUNT_AFTER` fraction after an axillary procedure that may as well be a date: no ':' or '=' between
    them, no "positive"/"+"/node word after it, and day/month, month/day or month/two-digit-year numbers ("SLNB
    3/5", "ALND 4/9", "ALND 2/10"). "0/3" is never a date (no day or month 0), nor is a fraction after a node
    word ("nodes 3/5", "SLN 1/2"): those are counts."""
    if m.group("sep") in (":", "=") or re.match(rf"\s*(?:{_POSITIVE}|{_NODE}\b)", sent[m.end() :], re.IGNORECASE):
        return False
    if not re.search(r"\b(?:slnb|snb|biopsy|alnd|anc|axc|dissection|clearance)\b", m.group(0), re.IGNORECASE):
        return False
    return (1 <= pos <= 12 and tot >= 1) or (13 <= pos <= 31 and 1 <= tot <= 12)


def _fact_at(ctx: tuple, kind: str, value: str | int, start: int, **kw) -> _Fact:
    """A fact at `start` of sentence `ctx` = (index, text, chunks, clauses, history cues, "now" resets)."""
    si, sent, bounds, clauses, cues, resets = ctx
    hist, weak = _history_at(sent, clauses, cues, resets, start)
    chunk, clause = _chunk_of(bounds, start), _chunk_of(clauses, start)
    return _Fact(kind, value, start, chunk, si, clause=clause, history=hist and not weak, **kw)


def _not_a_target(side: str, mentions: list[tuple[int, _Mention]], owners) -> bool:
    """A side named only by "bilateral" / "both sides" or in a benign clause, whose own mentions are all history,
    prophylactic or benign and own no fact ("right mastectomy, pN1a; left prophylactic mastectomy. Implants
    both sides"; "Left breast: screening MRI negative")."""
    own = [mm for _, mm in mentions if mm.sides == (side,)]
    if not own or any(not (mm.history or mm.prophylactic or mm.benign) for mm in own):
        return False
    return not any(o is not None and o.sides == (side,) and not (o.history or o.prophylactic) for _, o in owners)


def _settle(side: str, r: _Side, where: str) -> SideNote:
    """The side's record; a count that may be a date ("ALND 2/10") is read both ways and must not matter."""
    if not r.maybe_counts:
        return _side_note(side, r, where)
    readings: list[SideNote | InputError] = []
    for counts in (r.counts, r.counts + r.maybe_counts):
        try:
            readings.append(_side_note(side, replace(r, counts=counts), where))
        except InputError as err:
            readings.append(err)
    without, with_counts = readings
    if isinstance(without, InputError) and isinstance(with_counts, InputError):
        raise without
    if with_counts != without:
        raise InputError(
            f"{where}: cannot tell whether {r.maybe_text[0]!r} is a date or a node count for the {side} side "
            "(write e.g. '2/10 nodes positive')"
        )
    return without


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
    in_clause = [mm for mm in same if mm.clause == f.clause]
    if f.kind == "surgery" and in_clause and all(len(mm.sides) > 1 for mm in in_clause):
        return in_clause[0]  # "both breasts treated with lumpectomy"; not a stage: "bilateral SSM with 1/3 nodes"
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
    if r.pending - surgeries:
        done, planned = SURGERY_WORDS[next(iter(surgeries))], SURGERY_WORDS[next(iter(r.pending - surgeries))]
        raise InputError(
            f"{where}: the {side} side had {done} but a {planned} is still planned or discussed: "
            "which surgery does the RT follow?"
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
            first = {v for v, further in r.counts if not further}
            if len(first) > 1:
                raise InputError(f"{where}: two different node counts for the {side} side")
            if not first:
                raise InputError(f"{where}: a count of further nodes but not the first count for the {side} side")
            pos = first.pop() + sum(v for v, further in r.counts if further)
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
    if r.counts and any(v > 0 for v, _ in r.counts) == (stage == "N0"):
        raise InputError(f"{where}: the {side} side's N stage {stage} disagrees with its node count")
    if micro and stage != "N1mi":
        raise InputError(f"{where}: the {side} side is {stage} but a micrometastasis is mentioned: state the N stage")
    t = next(iter(r.t)) if len(r.t) == 1 else None
    surgery = next(iter(surgeries))
    return SideNote(side, surgery, stage, t)


def sides_mentioned(text: str) -> set[str]:
    """The breast sides a note names at all (history included), as the reader finds side words."""
    text = _normalise(text)
    return {s for m in _SIDE_WORD.finditer(text) for s in (_side_word(m, text) or ())}


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

"""Contrast phases of a liver CT study from what real studies carry: the messy SeriesDescriptions of the
HCC-TACE-Seg collection (rules tested on all 40 real ones) and, where present, acquisition time after
the bolus start. Used by the TACE app's phase selector and by the TCIA indexer that prepares training data."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

PHASES = ("NC", "AP", "PVP")
CONTRAST_PHASES = ("AP", "PVP")
STUDIES = ("pre", "post")
AP_MAX_DELAY_S = 50.0  # after bolus start; late arterial scans run at about 35-45 s
PVP_MAX_DELAY_S = 150.0  # portal-venous at about 60-90 s; later is a delayed/equilibrium phase

_RECON = re.compile(r"^RECON\s*(\d+)\s*:\s*")
_NON_CONTRAST = re.compile(r"\bPRE\b|\bNON[\s-]?CON|\bW/O\b|\bWITHOUT\b|\bUNENHANCED\b")
_ARTERIAL = re.compile(r"\bART\b|ARTERIAL|\bHAP\b")
_VENOUS = re.compile(r"VENOUS|\bPORTAL\b|\bPVP?\b")
_DELAYED = re.compile(r"DELAY|EQUILIBRIUM")
_CONTRAST = re.compile(r"PHASE|C-A-P|C/A/P|\bCAP\b|WITH CON|\bABD|\(AP\)|\bA/P\b|CONTRAST")


# ---------------------------------------------------------------------------------------------
# Phase rules
# ---------------------------------------------------------------------------------------------


def description_phase(description: str | None) -> tuple[str, str]:
    """What a SeriesDescription says: (label, rule).

    label is NC, AP or PVP (rule ``desc:...``), ``delayed``, ``contrast`` (contrast-enhanced,
    phase not stated) or ``unknown`` (rule ``""``).

    >>> description_phase("Recon 3: LIVER 2PHASE CAP")
    ('PVP', 'desc:recon-3')
    >>> description_phase("LIVER 3 PHASE (AP)")
    ('contrast', '')
    """
    text = " ".join(str(description or "").upper().split())
    match = _RECON.match(text)
    recon = int(match.group(1)) if match else None
    body = text[match.end() :] if match else text
    if _NON_CONTRAST.search(body):
        return "NC", "desc:non-contrast"
    if _ARTERIAL.search(body):
        return "AP", "desc:arterial"
    if _VENOUS.search(body):
        return "PVP", "desc:venous"
    if _DELAYED.search(body):
        return "delayed", "desc:delayed"
    if _CONTRAST.search(body):
        if recon == 2:
            return "AP", "desc:recon-2"
        if recon == 3:
            return "PVP", "desc:recon-3"
        return "contrast", ""
    return "unknown", ""


def timing_phase(acquisition_s: float | None, bolus_start_s: float | None) -> str | None:
    """AP, PVP or ``delayed`` from the delay after bolus start; None without both times."""
    if acquisition_s is None or bolus_start_s is None:
        return None
    delay = acquisition_s - bolus_start_s
    if delay < -12 * 3600:  # scanned after midnight
        delay += 24 * 3600
    if delay < 0:
        return None
    if delay <= AP_MAX_DELAY_S:
        return "AP"
    return "PVP" if delay <= PVP_MAX_DELAY_S else "delayed"


def dicom_seconds(value: object) -> float | None:
    """Seconds after midnight of a DICOM TM value ("HHMMSS.FFFFFF", "HH:MM:SS"); None if empty or bad."""
    text = str(value or "").strip().replace(":", "")
    if not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d*)?)?)?", text):
        return None
    hours, minutes = int(text[:2]), int(text[2:4] or 0)
    seconds = float(text[4:] or 0)
    return hours * 3600 + minutes * 60 + seconds


@dataclass
class CTSeries:
    uid: str
    number: int | None = None
    description: str = ""
    acquisition_s: float | None = None
    bolus_start_s: float | None = None
    contrast_agent: str = ""
    localizer: bool = False
    files: list[tuple[int, str]] = field(default_factory=list)  # (InstanceNumber, path)
    phase: str | None = None
    rule: str = ""
    note: str = ""  # why the series has no phase
    warning: str = ""

    @property
    def contrast_marked(self) -> bool:
        return (
            description_phase(self.description)[0] in ("contrast", "AP", "PVP", "delayed")
            or bool(self.contrast_agent.strip())
            or self.bolus_start_s is not None
        )

    def label(self) -> str:
        return f"#{self.number if self.number is not None else '?'} {self.description!r}"


def resolve_phases(series: Iterable[CTSeries]) -> dict[str, CTSeries]:
    """Give the CT series of one study their phases (see the module doc); returns phase -> series.

    Sets ``phase``/``rule`` on the chosen series and ``note`` on the others.
    """
    series = list(series)
    for s in series:
        s.phase, s.rule, s.note, s.warning = None, "", "", ""
    by_number = sorted(series, key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    chosen: dict[str, CTSeries] = {}

    def take(s: CTSeries, phase: str, rule: str) -> bool:
        if phase in chosen:
            return False
        chosen[phase] = s
        s.phase, s.rule, s.note = phase, rule, ""
        return True

    open_: list[CTSeries] = []
    for s in by_number:
        if s.localizer:
            s.note = "localizer"
            continue
        label, rule = description_phase(s.description)
        if label == "delayed":
            s.note = "delayed phase (description)"
        elif label not in PHASES:
            open_.append(s)
        elif not take(s, label, rule):
            s.note = f"second {label} series by description ({chosen[label].label()} kept)"
    still: list[CTSeries] = []
    for s in open_:
        timed = timing_phase(s.acquisition_s, s.bolus_start_s)
        if timed == "delayed":
            s.note = "delayed phase (bolus timing)"
        elif timed not in PHASES:
            still.append(s)
        elif not take(s, timed, "timing"):
            s.note = f"second {timed} series by bolus timing ({chosen[timed].label()} kept)"
    if still:
        timed_all = all(s.acquisition_s is not None for s in [*still, *chosen.values()])
        rule = "order:time" if timed_all else "order:number"

        def key(s: CTSeries) -> tuple:
            number = s.number if s.number is not None else 1 << 30
            return (s.acquisition_s, number, s.uid) if timed_all else (number, s.uid)

        still.sort(key=key)
        first = still[0]
        contrast = [chosen[p] for p in CONTRAST_PHASES if p in chosen]
        if (
            "NC" not in chosen
            and not first.contrast_marked
            and (len(still) > 1 or contrast)  # a liver exam has a contrast scan: a lone series is it
            and all(key(first) < key(s) for s in contrast)  # the plain scan comes first
        ):
            take(still.pop(0), "NC", rule)
        free = [p for p in CONTRAST_PHASES if p not in chosen]
        count = min(len(still), len(free))
        for s, phase in zip(still[:count], free[len(free) - count :], strict=True):
            take(s, phase, rule)
        for s in still[count:]:
            s.note = "no phase left for it (more series than phases)"
    for s in chosen.values():
        timed = timing_phase(s.acquisition_s, s.bolus_start_s)
        if s.rule.startswith("desc:") and timed in PHASES and timed != s.phase:
            s.warning = f"description says {s.phase}, bolus timing says {timed}"
    return chosen

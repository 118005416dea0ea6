"""Loader for the real HCC-TACE-Seg clinical table (TCIA, DOI 10.7937/TCIA.5FNA-0924, CC BY 4.0).

The table has one row per patient (105, ``TCIA_ID`` = ``HCC_001`` ... ``HCC_105``) with the
collection's original column names, which :func:`load_clinical` keeps unchanged. It adds:

``OS_months``
    Overall survival in months. The table's ``OS`` (and ``TTP``) are in **weeks**; months are
    ``OS / 4.345`` (weeks per month), which reproduces seed Table 4 to one decimal.
``event``
    ``bool`` from ``Death_1_StillAliveorLostToFU_0``: ``True`` = death (event), ``False`` = alive
    or lost to follow-up (censored). The real table has 93 events and 12 censored patients.
``protocol``
    The ``chemotherapy`` regimen as action-base keywords (``oncoplan.tace.actions``), with
    Lipiodol added as seed Table 4 does, in ``str(Protocol)`` form: drugs, then embolics, each in
    action-base order, e.g. ``"Mitomycin; Cisplatin; Doxorubicin; Lipiodol"`` and
    ``"Doxorubicin; Lipiodol; LC Beads"``. Seed Table 4 writes these as
    ``"Cisplatin; Doxorubicin; Mitomycin; Lipiodol"`` and ``"Doxorubicin; LC beads; Lipiodol"``:
    compare protocols as sets (e.g. ``set(Protocol.parse(s).items)``), not as strings.
    ``None`` where ``chemotherapy`` is missing.

Quirks of the file that the loader copes with (do not "clean" the copy):

* UTF-8 with a byte-order mark, and no newline after the last row;
* missing values written as ``NA`` or as empty cells (read as NaN; ``protocol`` is ``None``);
* ``chemotherapy`` is a coarse free-text regimen: ``"Cisplatin, doxorubicin, Mitomycin-C"``,
  ``"doxorubicin LC beads"`` (no separator: Doxorubicin + LC Beads), ``"Cisplatin, Mitomycin-C"``
  and one misspelt ``"Cisplastin"`` (-> Cisplatin); spellings are resolved by
  :func:`oncoplan.tace.actions.canonical`.

Seed Table 4 disagrees with this table on some protocols (HCC_042, and also HCC_058, which the
table gives as Cisplatin + Doxorubicin + Mitomycin-C); the loader reports the table as it is.

A file missing a required column (``TCIA_ID``, ``OS``, ``Death_1_StillAliveorLostToFU_0``,
``chemotherapy``), with a non-numeric or missing ``OS``, a status other than 0/1, a duplicated
``TCIA_ID`` or a regimen word outside the action base raises a one-line ``ValueError`` naming the
file and the problem.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from oncoplan.tace.actions import Protocol, canonical
from oncoplan.tace.clinical import WEEKS_PER_MONTH

REQUIRED_COLUMNS: tuple[str, ...] = ("TCIA_ID", "OS", "Death_1_StillAliveorLostToFU_0", "chemotherapy")
ID_COLUMN = "TCIA_ID"
STATUS_COLUMN = "Death_1_StillAliveorLostToFU_0"
# Every TACE in the collection is conventional or drug-eluting-bead TACE with Lipiodol (seed Table 4).
ADDED_EMBOLIC = "Lipiodol"
# Missing-value tokens of the file; only these, so no text value is silently turned into NaN.
_NA_VALUES: list[str] = ["", "NA"]


def _regimen_keywords(part: str) -> list[str]:
    """Canonical names in one comma-free piece of a regimen, e.g. "doxorubicin LC beads".

    The longest run of words that is an action-base name (or alias) wins at each position.
    """
    words = part.split()
    found: list[str] = []
    i = 0
    while i < len(words):
        for j in range(len(words), i, -1):
            try:
                found.append(canonical(" ".join(words[i:j])))
            except ValueError:
                continue
            i = j
            break
        else:
            raise ValueError(f"{words[i]!r} in regimen {part.strip()!r} is not in the TACE action base")
    return found


def parse_chemotherapy(text: str | None) -> Protocol | None:
    """The protocol of one ``chemotherapy`` cell, with Lipiodol added; ``None`` if missing.

    >>> str(parse_chemotherapy("doxorubicin LC beads"))
    'Doxorubicin; Lipiodol; LC Beads'
    """
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return None
    text = str(text)
    if text.strip().upper() == "NA":
        return None
    names: list[str] = []
    for part in re.split(r"[;,+/]", text):
        if part.strip():
            names.extend(_regimen_keywords(part))
    return Protocol.of([*names, ADDED_EMBOLIC])


def load_clinical(path: str | Path) -> pd.DataFrame:
    """Read the HCC-TACE-Seg clinical table: one row per patient, indexed by ``TCIA_ID``.

    Keeps every original column and adds ``OS_months`` (float), ``event`` (bool) and
    ``protocol`` (str or None); see the module docstring for units and quirks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HCC-TACE-Seg clinical table not found")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False, na_values=_NA_VALUES)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable CSV table ({first})") from exc
    df.columns = [str(c).strip() for c in df.columns]

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}")

    ids = df[ID_COLUMN].astype("string").str.strip()
    if ids.isna().any():
        rows = [int(i) + 2 for i in df.index[ids.isna()]]  # +2: header line, 1-based
        raise ValueError(f"{path}: empty {ID_COLUMN} on line(s) {rows}")
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise ValueError(f"{path}: duplicated {ID_COLUMN} {', '.join(dup)}")
    df[ID_COLUMN] = ids.astype(object)
    df = df.set_index(ID_COLUMN)

    os_weeks = pd.to_numeric(df["OS"], errors="coerce")
    bad = os_weeks.isna() | os_weeks.isin([math.inf, -math.inf])
    if bad.any():
        pid = bad.index[bad][0]
        more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
        raise ValueError(f"{path}: OS (weeks) of {pid} is not numeric: {df.at[pid, 'OS']!r}{more}")
    if (os_weeks < 0).any():
        pid = os_weeks.index[os_weeks < 0][0]
        raise ValueError(f"{path}: OS (weeks) of {pid} is negative: {os_weeks[pid]}")

    status = pd.to_numeric(df[STATUS_COLUMN], errors="coerce")
    bad_status = ~status.isin([0, 1])
    if bad_status.any():
        pid = bad_status.index[bad_status][0]
        raise ValueError(f"{path}: {STATUS_COLUMN} of {pid} is not 0 or 1: {df.at[pid, STATUS_COLUMN]!r}")

    protocols: list[str | None] = []
    for pid, text in df["chemotherapy"].items():
        try:
            proto = parse_chemotherapy(None if pd.isna(text) else str(text))
        except ValueError as exc:
            raise ValueError(f"{path}: chemotherapy of {pid}: {exc}") from exc
        protocols.append(None if proto is None else str(proto))

    df["OS_months"] = (os_weeks / WEEKS_PER_MONTH).astype(float)
    df["event"] = status.astype(int).astype(bool)
    df["protocol"] = pd.Series(protocols, index=df.index, dtype=object)
    return df

"""Free-text TACE reports (MeWM seed Table 5) and coarse regimens (Table 4) -> action keywords."""

from __future__ import annotations

import pytest

from oncoplan.planner.parsing import parse_report, report_keywords
from oncoplan.tace.actions import Protocol

# Seed Table 5 ("Processed Chemotherapy"), copied verbatim, with the protocol each row describes.
TABLE5 = [
    (
        "HCC_08116730",
        "Raltitrexed 4 mg was infused through the catheter; 5 ml ultra-liquid Lipiodol and 5 mg Epirubicin were "
        "mixed to create an emulsion for embolization; the emulsion was slowly injected under fluoroscopic "
        "guidance; an appropriate amount of Gelatin Sponge particles was used to embolize the tumor-feeding "
        "branches of the S8 segment of the right hepatic artery; Lipiodol deposition in the tumor was "
        "satisfactory; tumor-feeding arteries were occluded on the final angiography.",
        ("Raltitrexed", "Lipiodol", "Epirubicin", "Gelatin Sponge"),
    ),
    (
        "HCC_01061677",
        "THP 10 mg was infused through the catheter; 10 mg THP and 10 ml ultra-liquid Lipiodol were mixed to "
        "create an emulsion for embolization; 12 ml of the emulsion was slowly injected under fluoroscopic "
        "guidance; Lipiodol deposition in the tumor and satellite lesions was satisfactory; tumor-feeding "
        "arteries were occluded on the final angiography.",
        ("Pirarubicin", "Lipiodol"),
    ),
    (
        "HCC_01192613",
        "THP 40 mg and 30 ml ultra-liquid Lipiodol, along with a small amount of contrast agent, were mixed to "
        "create an emulsion for embolization; 30 ml of the emulsion was slowly injected under fluoroscopic "
        "guidance; a small amount of Gelatin Sponge particles was used for embolization; Lipiodol deposition "
        "in the tumor was satisfactory; no tumor staining was observed on the final angiography.",
        ("Pirarubicin", "Lipiodol", "Gelatin Sponge"),
    ),
    (
        "HCC_01204059",
        "Cisplatin 40 mg was infused through the catheter; 10 ml ultra-liquid Lipiodol was slowly injected "
        "under fluoroscopic guidance for embolization of the right hepatic artery tumor-feeding branches; 3 ml "
        "ultra-liquid Lipiodol was injected for protective embolization of the segment II branch of the left "
        "hepatic artery; Lipiodol deposition in the tumor was acceptable; tumor staining mostly disappeared "
        "on the final angiography.",
        ("Cisplatin", "Lipiodol"),
    ),
    (
        "HCC_01532843",
        "Oxaliplatin 100 mg and Epirubicin 30 mg were infused through the catheter; 10 mg Epirubicin and 10 ml "
        "ultraliquid Lipiodol were mixed to create an emulsion for embolization; 10 ml of the emulsion was "
        "slowly injected under fluoroscopic guidance; an appropriate amount of Gelatin Sponge particles was "
        "used to embolize the tumorfeeding branches of the right hepatic artery; Lipiodol deposition in the "
        "tumor was satisfactory; tumor staining disappeared on the final angiography.",
        ("Oxaliplatin", "Epirubicin", "Lipiodol", "Gelatin Sponge"),
    ),
    (
        "HCC_01532843",
        "Epirubicin 40 mg and Oxaliplatin 100 mg were infused through the catheter; 10 ml ultra-liquid "
        "Lipiodol was slowly injected under fluoroscopic guidance for embolization; Lipiodol deposition in "
        "the tumor was satisfactory; tumor-feeding arteries were mostly occluded on the final angiography.",
        ("Epirubicin", "Oxaliplatin", "Lipiodol"),
    ),
]

# Seed Table 4 (HCC-TACE-Seg "Chemotherapy" column), verbatim.
TABLE4 = [
    ("Cisplatin; Doxorubicin; Mitomycin; Lipiodol", {"Cisplatin", "Doxorubicin", "Mitomycin", "Lipiodol"}),
    ("Doxorubicin; Lipiodol; LC beads", {"Doxorubicin", "Lipiodol", "LC Beads"}),
    ("Cisplatin; Mitomycin; Lipiodol", {"Cisplatin", "Mitomycin", "Lipiodol"}),
    ("Doxorubicin; LC beads; Lipiodol", {"Doxorubicin", "LC Beads", "Lipiodol"}),
]


@pytest.mark.parametrize(("patient", "report", "expected"), TABLE5, ids=[f"{r[0]}-{i}" for i, r in enumerate(TABLE5)])
def test_table5_reports_give_their_protocol(patient: str, report: str, expected: tuple[str, ...]) -> None:
    # keywords in order of first mention, each once (THP is Pirarubicin; no "contrast agent" keyword)
    assert report_keywords(report) == expected
    assert parse_report(report) == Protocol.of(expected)


def test_table5_protocols_are_the_external_site_practice() -> None:
    from oncoplan.planner.prior import PRACTICE

    practice = {Protocol.parse(p) for p in PRACTICE["external"]}
    assert all(parse_report(report) in practice for _, report, _ in TABLE5)


@pytest.mark.parametrize(("regimen", "expected"), TABLE4)
def test_table4_regimens(regimen: str, expected: set[str]) -> None:
    assert set(parse_report(regimen).items) == expected


def test_report_variants_and_unknown_words() -> None:
    text = (
        "Mitomycin-C 10 mg and adriamycin 50 mg with ethiodized oil; DC beads 100-300 um; "
        "10-hydroxycamptothecin; polyvinyl alcohol particles; sorafenib was continued."
    )
    assert report_keywords(text) == ("Mitomycin", "Doxorubicin", "Lipiodol", "LC Beads", "Hydroxycamptothecin", "PVA")
    assert report_keywords("No chemoembolization was performed.") == ()

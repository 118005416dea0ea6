"""Synthetic breast radiotherapy cohort: post-operative chest CT, clinical record, CTV truth.

Ground truth follows the guideline logic of the LLMSeg seed (Table 5/6): per treated side,
breast-conserving surgery (BCS) + N0/N1mi -> whole breast; BCS + N1-3 -> breast + regional
nodes (RNI: axilla I-III, supraclavicular, internal mammary); total mastectomy + N0/N1mi ->
chest wall; mastectomy + N1-3 -> chest wall + RNI. N1mi (micrometastasis only) is treated
like N0, as ESTRO/ASTRO practice usually does, so the note's N1mi vs N1 matters.

Image cues are weak on purpose: nodal status leaves no trace; after BCS both breasts are
present and only some cases carry a seroma or surgical clips on the treated side; a
mastectomy is visible. The CTV is `ctv_mask(anatomy, record, grid)`: a pure function of the
anatomy and the clinical record, so flipping the note's laterality moves the target.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from oncoplan.ctv.notes import SIDES, SURGERY_TEXT
from oncoplan.training.synth.geometry import Grid
from oncoplan.training.synth.shapes import Region, Shape, finish_ct, rasterise, smooth_field

T_STAGES = ("Tis", "T1", "T2", "T3", "T4")
NODE_POSITIVE = frozenset({"N1", "N2", "N3"})  # stages that get regional nodal irradiation
TARGETS = ("Breast only", "Breast + RNI", "CW only", "CW + RNI")


@dataclass(frozen=True)
class SiteProfile:
    """How one hospital differs: class mix (seed Table 6), scanner noise, HU offset, slices."""

    name: str
    target_mix: tuple[float, float, float, float]  # TARGETS order
    both_sides: float
    n_mix_positive: tuple[float, float, float]  # N1, N2, N3 among node-positive
    t_mix: tuple[float, float, float, float, float]
    neoadjuvant: float
    noise_hu: float
    hu_offset: float
    slice_thickness: tuple[float, ...]
    manufacturer: str
    model: str
    kernel: str


SITES = {
    # Training + internal validation columns of Table 6.
    "internal": SiteProfile(
        "internal",
        (0.357, 0.299, 0.044, 0.301),
        0.036,
        (0.591, 0.271, 0.142),
        (0.102, 0.374, 0.378, 0.092, 0.054),
        0.436,
        12.0,
        0.0,
        (3.0, 5.0),
        "OncoPlan Synthetic",
        "Phantom CT A",
        "STANDARD",
    ),
    # External validation column: more N0 and BCS, a noisier scanner with an HU offset.
    "external": SiteProfile(
        "external",
        (0.633, 0.276, 0.010, 0.082),
        0.0,
        (0.586, 0.310, 0.103),
        (0.194, 0.418, 0.327, 0.051, 0.010),
        0.255,
        22.0,
        18.0,
        (2.0, 2.5),
        "OncoPlan Synthetic",
        "Phantom CT B",
        "B30f",
    ),
}


@dataclass(frozen=True)
class SideRecord:
    """Treatment facts for one treated breast."""

    side: str
    surgery: str  # "BCS" | "TM"
    n_stage: str
    t_stage: str

    @property
    def rni(self) -> bool:
        return self.n_stage in NODE_POSITIVE

    @property
    def target(self) -> str:
        return ("Breast" if self.surgery == "BCS" else "CW") + (" + RNI" if self.rni else " only")


@dataclass(frozen=True)
class BreastRecord:
    """The clinical record of one case; `sides` holds one entry per treated side."""

    case_id: str
    age: int
    sides: tuple[SideRecord, ...]
    chemotherapy: str  # "Neoadjuvant" | "Adjuvant" | "None"
    seroma: bool
    clips: bool

    @property
    def laterality(self) -> str:
        return "both" if len(self.sides) == 2 else self.sides[0].side

    def with_laterality_swapped(self) -> BreastRecord:
        swap = {"left": "right", "right": "left"}
        sides = tuple(replace(s, side=swap[s.side]) for s in self.sides)
        return replace(self, sides=tuple(sorted(sides, key=lambda s: SIDES.index(s.side))))

    def with_nodes_toggled(self) -> BreastRecord:
        """N0/N1mi sides become N1 and node-positive sides N0: the guideline adds or drops RNI."""
        sides = tuple(replace(s, n_stage="N0" if s.rni else "N1") for s in self.sides)
        return replace(self, sides=sides)


def clinical_note(record: BreastRecord, with_t_stage: bool = False) -> str:
    """The seed's Table 5 note: "N1mi, breast conserving surgery, left side"; sides joined by "; "."""
    clauses = []
    for s in record.sides:
        parts = [s.n_stage] + ([f"c{s.t_stage}"] if with_t_stage else []) + [SURGERY_TEXT[s.surgery]]
        clauses.append(", ".join([*parts, f"{s.side} side"]))
    return "; ".join(clauses)


def sample_record(case_id: str, site: SiteProfile, rng: np.random.Generator) -> BreastRecord:
    """Draw a clinical record from the site's Table-6 class mix."""
    both = rng.random() < site.both_sides
    sides = SIDES if both else (SIDES[0] if rng.random() < 0.52 else SIDES[1],)
    records = []
    for side in sides:
        target = TARGETS[rng.choice(4, p=np.asarray(site.target_mix) / sum(site.target_mix))]
        surgery = "BCS" if target.startswith("Breast") else "TM"
        if target.endswith("RNI"):
            n_stage = ("N1", "N2", "N3")[rng.choice(3, p=np.asarray(site.n_mix_positive) / sum(site.n_mix_positive))]
        else:
            n_stage = "N1mi" if rng.random() < 0.15 else "N0"
        t_stage = T_STAGES[rng.choice(5, p=np.asarray(site.t_mix) / sum(site.t_mix))]
        records.append(SideRecord(side, surgery, n_stage, t_stage))
    chemo = "Neoadjuvant" if rng.random() < site.neoadjuvant else ("Adjuvant" if rng.random() < 0.5 else "None")
    any_bcs = any(s.surgery == "BCS" for s in records)
    return BreastRecord(
        case_id=case_id,
        age=int(np.clip(rng.normal(53.6, 11.0), 27, 87)),
        sides=tuple(records),
        chemotherapy=chemo,
        seroma=any_bcs and rng.random() < 0.35,
        clips=any_bcs and rng.random() < 0.4,
    )


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest: every structure as an analytic region in anatomical mm.

    Nodal regions and breast footprints exist on both sides whatever was treated, so the
    CTV for any record can be drawn on the same body.
    """

    regions: dict[str, Region]
    half_width: float
    half_depth: float
    breast_shapes: dict[str, Shape]  # the breast before surgery, per side


NODAL = ("axilla", "supraclavicular", "internal_mammary")
LABELS = (
    "body",
    "lung_left",
    "lung_right",
    "heart",
    "spine",
    "sternum",
    "breast_left",
    "breast_right",
    *(f"{n}_{s}" for s in SIDES for n in NODAL),
)


def sample_anatomy(record: BreastRecord, rng: np.random.Generator) -> Anatomy:
    a = float(rng.uniform(150, 180))  # half width of the thorax (mm)
    b = float(rng.uniform(95, 120))  # half depth
    zc = -120.0
    regions: dict[str, Region] = {}
    thorax = Shape((0, 0, -100), (a, b, 260), p_xy=2.6, p_z=8, wobble=(0.02, int(rng.integers(1 << 30))))
    inner = thorax.scaled(-float(rng.uniform(14, 22)))  # inside the muscle/rib layer
    rib_outer = inner.scaled(6.0)
    breasts: dict[str, Shape] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        x = sign * a * float(rng.uniform(0.45, 0.55))
        y_wall = -b * (1 - abs(x / a) ** 2.6) ** (1 / 2.6)
        r = (float(rng.uniform(55, 75)), float(rng.uniform(35, 65)), float(rng.uniform(55, 70)))
        breasts[side] = Shape(
            (x, y_wall + 8, zc + float(rng.uniform(-10, 10))),
            r,
            p_xy=2.0,
            p_z=2.0,
            wobble=(0.04, int(rng.integers(1 << 30))),
            keep=(((0, 1, 0), (0, y_wall + 12, 0)),),
        )
    treated = {s.side: s for s in record.sides}
    present = [s for s in SIDES if not (s in treated and treated[s].surgery == "TM")]
    # Shoulder girdle: the upper chest is wider; the axilla lies between it and the ribs.
    shoulders = Shape(
        (0, b * 0.05, -5), (a + 45, b * 0.92, 75), p_xy=2.4, p_z=3, wobble=(0.02, int(rng.integers(1 << 30)))
    )
    body_union = [thorax, shoulders] + [breasts[s] for s in present]
    regions["body"] = Region(body_union)
    fat = float(rng.uniform(8, 14))
    regions["muscle"] = Region([thorax.scaled(-fat), shoulders.scaled(-fat)], [inner])
    regions["ribs"] = Region([rib_outer], [inner])
    for side, sign in (("left", 1.0), ("right", -1.0)):
        regions[f"lung_{side}"] = Region(
            [
                Shape(
                    (sign * (a * 0.40), b * 0.08, -105),
                    (a * 0.36, b * 0.72, 125),
                    p_xy=2.2,
                    p_z=2.4,
                    wobble=(0.03, int(rng.integers(1 << 30))),
                )
            ]
        )
    regions["heart"] = Region(
        [Shape((a * 0.12, -b * 0.15, -175), (a * 0.33, b * 0.45, 62), wobble=(0.03, int(rng.integers(1 << 30))))]
    )
    regions["spine"] = Region([Shape((0, b * 0.78, -100), (17, 15, 400), p_z=8)])
    regions["sternum"] = Region([Shape((0, -b + 22, -85), (14, 7, 95), p_z=4)])
    for side in SIDES:
        regions[f"breast_{side}"] = Region([breasts[side]] if side in present else [])
    # Nodal regions: invisible in the image, present on both sides, outside the ribcage
    # except the internal mammary chain, which runs just inside it beside the sternum.
    for side, sign in (("left", 1.0), ("right", -1.0)):
        regions[f"axilla_{side}"] = Region(
            [
                Shape((sign * (a + 12), b * 0.05, -55), (22, 32, 38)),  # level I, lateral to pectoralis minor
                Shape((sign * (a - 8), -b * 0.30, -25), (20, 20, 28)),  # level II, behind it
                Shape((sign * (a - 38), -b * 0.62, 0), (18, 15, 22)),  # level III, infraclavicular
            ],
            minus=[inner],
            within=[shoulders.scaled(-4.0)],
        )
        regions[f"supraclavicular_{side}"] = Region(
            [Shape((sign * 58, -b * 0.45, 40), (28, 22, 22))], minus=[inner], within=[shoulders.scaled(-4.0)]
        )
        regions[f"internal_mammary_{side}"] = Region([Shape((sign * 32, -b + 28, -75), (8, 8, 60), p_z=4)])
    # Post-operative cues on the (first) BCS side only.
    bcs = [s.side for s in record.sides if s.surgery == "BCS"]
    seroma, clips = [], []
    if bcs:
        br = breasts[bcs[0]]
        c = np.asarray(br.centre) + np.asarray([0, -br.radii[1] * 0.45, 0]) + rng.uniform(-8, 8, 3)
        if record.seroma:
            seroma.append(Shape(tuple(c), tuple(rng.uniform(9, 18, 3)), wobble=(0.08, int(rng.integers(1 << 30)))))
        if record.clips:
            for _ in range(int(rng.integers(3, 6))):
                clips.append(Shape(tuple(c + rng.normal(0, 12, 3)), (1.2, 1.2, 2.5)))
    regions["seroma"] = Region(seroma)
    regions["clips"] = Region(clips)
    return Anatomy(regions, a, b, breasts)


def _chest_wall(anatomy: Anatomy, side: str) -> Region:
    """Chest-wall CTV: 3 mm under the skin down to the ribs (included), under the breast footprint."""
    br = anatomy.breast_shapes[side]
    footprint = Shape(
        (br.centre[0], -anatomy.half_depth, br.centre[2]),
        (br.radii[0] * 1.15, anatomy.half_depth, br.radii[2] * 1.15),
        keep=(((0, 1, 0), (0, br.centre[1] + 25, 0)),),
    )
    thorax = anatomy.regions["body"].union[0]
    inside_ribs = anatomy.regions["ribs"].minus[0]
    return Region([footprint], minus=[inside_ribs], within=[thorax.scaled(-3.0)])


def ctv_regions(anatomy: Anatomy, record: BreastRecord) -> dict[str, Region]:
    """The CTV components of each treated side, by name (e.g. "breast_left", "rni_left")."""
    out: dict[str, Region] = {}
    for s in record.sides:
        if s.surgery == "BCS":
            br = anatomy.breast_shapes[s.side].scaled(-5.0)  # 5 mm from the skin
            out[f"breast_{s.side}"] = Region([br])
        else:
            out[f"chest_wall_{s.side}"] = _chest_wall(anatomy, s.side)
        if s.rni:
            for n in NODAL:
                out[f"{n}_{s.side}"] = anatomy.regions[f"{n}_{s.side}"]
    return out


def ctv_mask(anatomy: Anatomy, record: BreastRecord, grid: Grid) -> np.ndarray:
    """Ground-truth CTV on a grid: the union of every treated side's components."""
    masks = rasterise(ctv_regions(anatomy, record), grid)
    out = np.zeros(grid.shape, dtype=bool)
    for m in masks.values():
        out |= m
    return out


def structure_masks(anatomy: Anatomy, grid: Grid) -> dict[str, np.ndarray]:
    return rasterise(anatomy.regions, grid)


def render_ct(masks: dict[str, np.ndarray], grid: Grid, site: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """HU volume from structure masks: tissue values, texture, blur and scanner noise."""
    tex = smooth_field(grid, rng, 6.0)
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[masks["body"]] = -95.0 + 10 * tex[masks["body"]]  # subcutaneous fat
    hu[masks["muscle"]] = 45.0 + 6 * tex[masks["muscle"]]
    paint = [
        ("ribs", 450.0, 120.0),
        ("lung_left", -840.0, 40.0),
        ("lung_right", -840.0, 40.0),
        ("heart", 40.0, 8.0),
        ("spine", 380.0, 80.0),
        ("sternum", 320.0, 60.0),
    ]
    for name, value, spread in paint:
        m = masks[name]
        hu[m] = value + spread * tex[m]
    for side in SIDES:
        m = masks[f"breast_{side}"]
        gland = m & (tex > 0.2)  # fibroglandular strands inside fatty breast tissue
        hu[m] = -90.0 + 8 * tex[m]
        hu[gland] = 25.0 + 10 * tex[gland]
    hu[masks["seroma"]] = 12.0
    hu[masks["clips"]] = 2500.0
    hu = finish_ct(hu, grid, rng, site.noise_hu)
    body = masks["body"]
    hu[body] += site.hu_offset
    return hu

"""The TACE plan as a PDF a clinician can read (matplotlib, no pyplot state): the chosen protocol,
the ranked candidates with their predicted risk and spread, and axial views of the pre-treatment
tumor and of the simulated post-treatment tumor of each top candidate, in model space."""

from __future__ import annotations

import io
import textwrap
from datetime import datetime

import numpy as np

from oncoplan.operators.tace_planning import TacePlan
from oncoplan.planner.search import search_summary
from oncoplan.planner.separation import separation_text

DISCLAIMER = (
    "RESEARCH USE ONLY - not a medical device, not for clinical decisions. Outcomes are simulated by "
    "a world model (MeWM); risks are comparable between candidates of this study only."
)
COLOURS = {2: ("#e4002b", "viable tumor"), 3: ("#1f77b4", "necrosis"), 4: ("#ffd200", "Lipiodol")}
MAX_BARS = 15
RED = "#b00000"  # the disclaimer, warnings, contraindications and cautions


def _axial(array: np.ndarray, z: int) -> np.ndarray:
    """An RAS (x, y, z) array's axial slice as radiologists view it: anterior up, patient's right on the left."""
    return array[:, :, z].T[::-1, ::-1]


def _text_page(fig, plan: TacePlan) -> float:
    """The first page's text; returns the height (figure fraction) where it ends."""
    ds = plan.volume.datasets[0]
    best = plan.best
    s = plan.settings.search
    lines = [
        f"Patient ID: {ds.get('PatientID', '')}    Study date: {ds.get('StudyDate', '')}",
        f"Pre-treatment series: {ds.get('SeriesDescription', '') or '(no description)'} "
        f"(#{ds.get('SeriesNumber', '?')}, phase {plan.phase})",
        f"Search: {search_summary(plan.plan.method, s)} ({plan.settings.label})",
        f"Protocols evaluated: {len(plan.plan.ranked)}; models: "
        + ", ".join(f"{k} {v}" for k, v in plan.bundles.items()),
        f"Assistant segmentation: liver {plan.segmented_cm3.get('liver', 0):.0f} cm3 (tumor included), "
        f"tumor {plan.segmented_cm3.get('tumor', 0):.0f} cm3",
        "",
        f"Chosen protocol: {best.protocol}  (pick: {plan.plan.pick}; {separation_text(plan.plan.separation)})",
        f"Predicted risk: {best.mean_risk:.4f} +/- {best.std_risk:.4f} (mean +/- SD over {len(best.sample_risks)} "
        "simulated outcomes; lower is better)",
    ]
    from oncoplan.operators.tace_writers import clinical_lines

    extra = clinical_lines(plan)
    lines += ["", *extra["clinical"], *extra["imputed"], *extra["policy"]]
    fig.text(0.06, 0.95, "TACE plan (world-model search)", fontsize=16, weight="bold", va="top")
    fig.text(0.06, 0.915, DISCLAIMER, fontsize=7.5, color="#b00000", va="top", wrap=True)
    wrapped = [part for line in lines for part in (textwrap.wrap(line, 95) or [""])]
    fig.text(0.06, 0.875, "\n".join(wrapped), fontsize=8, va="top", family="monospace", linespacing=1.5)
    # Under the text block (8 pt lines at 1.5 spacing) and a little gap, in red: the segmentation warning,
    # then the guideline contraindications and cautions (the plan above stays: research use).
    line_height = 8 * 1.5 / (fig.get_figheight() * 72)
    below = 0.875 - (len(wrapped) + 0.6) * line_height
    red = ([f"Warning: {plan.segmentation_warning}"] if plan.segmentation_warning else []) + extra["flags"]
    if red:
        warning = [part for line in red for part in textwrap.wrap(line, 95)]
        fig.text(0.06, below, "\n".join(warning), fontsize=8, color=RED, weight="bold", va="top", family="monospace")
        below -= (len(warning) + 0.6) * line_height
    return below


def _risk_chart(ax, plan: TacePlan) -> None:
    ranked = plan.plan.ranked[:MAX_BARS]
    y = np.arange(len(ranked))[::-1]
    means = [r.mean_risk for r in ranked]
    spread = [r.std_risk for r in ranked]
    # A forest plot (estimate and spread per row): risks are log-hazards on no fixed scale, so bars
    # from zero would say nothing and be clipped by the limits.
    for yi, r in zip(y, ranked, strict=True):
        colour = "#d62728" if r is plan.best else "#4c72b0"
        ax.errorbar(r.mean_risk, yi, xerr=r.std_risk, fmt="o", color=colour, ecolor=colour, capsize=3, markersize=6)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_ylim(-0.7, len(ranked) - 0.3)
    ax.set_yticks(y, [f"{i + 1}. {r.protocol}" for i, r in enumerate(ranked)], fontsize=7)
    lo = min(m - e for m, e in zip(means, spread, strict=True))
    hi = max(m + e for m, e in zip(means, spread, strict=True))
    pad = max((hi - lo) * 0.15, 1e-3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("predicted risk (mean +/- SD over simulated outcomes; lower is better)", fontsize=8)
    shown = f"top {len(ranked)} of {len(plan.plan.ranked)}" if len(plan.plan.ranked) > len(ranked) else "all"
    ax.set_title(f"Candidate protocols ranked by predicted risk ({shown})", fontsize=10)


def _overlay(ax, image: np.ndarray, labels: np.ndarray, title: str) -> None:
    from matplotlib.colors import ListedColormap

    ax.imshow(image, cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
    for value, (colour, _) in COLOURS.items():
        layer = np.ma.masked_where(labels != value, np.ones_like(labels, dtype=float))
        ax.imshow(layer, cmap=ListedColormap([colour]), alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7.5)
    ax.set_xticks([])
    ax.set_yticks([])


def render_report(plan: TacePlan) -> bytes:
    """The PDF (two A4 pages) as bytes."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    mask = plan.mask_window > 0
    z = round(float(np.argwhere(mask)[:, 2].mean())) if mask.any() else plan.pre_window.shape[2] // 2
    buffer = io.BytesIO()
    meta = {"Title": "TACE plan (research use only)", "Creator": "OncoPlan", "CreationDate": datetime.now()}
    with PdfPages(buffer, metadata=meta) as pdf:
        fig = Figure(figsize=(8.27, 11.69))
        end = _text_page(fig, plan)
        top = min(0.64, end - 0.04)  # the chart under the text, however long it is
        _risk_chart(fig.add_axes((0.4, 0.08, 0.54, max(top - 0.08, 0.2))), plan)
        pdf.savefig(fig)

        fig = Figure(figsize=(8.27, 11.69))
        fig.text(0.06, 0.96, "Pre-treatment tumor and simulated post-treatment tumor", fontsize=13, weight="bold")
        fig.text(0.06, 0.94, DISCLAIMER, fontsize=7, color="#b00000", wrap=True)
        spacing = "x".join(f"{v:g}" for v in plan.spacing_mm)
        fig.text(
            0.06,
            0.915,
            f"Axial slice through the tumor in model space (RAS, {spacing} mm voxels, anterior up, patient's right "
            "on the left); simulated outcomes: mean CT and per-voxel majority label of the samples.",
            fontsize=7,
            wrap=True,
        )
        panels = [("Pre-treatment (assistant segmentation)", plan.pre_window, np.where(mask, 2, 0))]
        for i, c in enumerate(plan.candidates, start=1):
            r = c.ranked
            title = f"#{i} {r.protocol}\nrisk {r.mean_risk:.4f} +/- {r.std_risk:.4f}"
            panels.append((title, c.post_window, c.post_labels))
        for k, (title, image, labels) in enumerate(panels):
            ax = fig.add_subplot(2, 2, k + 1)
            _overlay(ax, _axial(image, z), _axial(labels, z), title)
        handles = [Patch(color=c, label=name) for c, name in COLOURS.values()]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
        pdf.savefig(fig)
    return buffer.getvalue()

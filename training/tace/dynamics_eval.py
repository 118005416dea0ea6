"""What the dynamics bundle's inference and evaluate configs run: simulate cases, and test that the
protocol truly conditions the simulation (the check MeWM's released inference would fail).

Protocol sensitivity: for each held-out synthetic case, `k` conflict-free protocols spread over the
range of the case's ground-truth viable-tumor fraction (from its hidden response profile) are
simulated `samples` times each; the assistant segments every simulation; the Spearman correlation
between the simulated and the true viable fractions over the `k` protocols is the case's score.

The same score is also read without the assistant (`spearman_intensity`): inside the pre-treatment
lesion, each simulated voxel takes the tissue of the synthetic cohort's HU table (liver, viable,
necrosis, Lipiodol; the case's phase) nearest to its value. It says whether the dynamics model
carries the protocol's effect into the image whatever the assistant's quality; synthetic cohorts only.
And from the response head alone (`spearman_response_head`, its predicted viable share): the ranking
the renderer is asked to draw, so the two stages' shares of any loss can be told apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from oncoplan.errors import InputError
from oncoplan.stats import bootstrap_ci
from oncoplan.tace.actions import Protocol, conflicts
from oncoplan.tace.dynamics import RESPONSE, multi_hot, to_hu
from oncoplan.tace.world_model import WorldModel, window_around
from oncoplan.training.synth import liver as L
from oncoplan.training.synth.write_liver import LIPIODOL_HU, PHASES, TISSUE_HU
from oncoplan.training.tace.data import load_prepared


def intensity_viable_fraction(window: np.ndarray, lesion: np.ndarray, phase: str) -> float:
    """Viable share of the lesion read from intensities alone (see module doc); `window` scaled to [-1, 1]."""
    hu = to_hu(window[lesion])
    i = PHASES.index(phase)
    tissues = np.array([TISSUE_HU["liver"][i], TISSUE_HU["viable"][i], TISSUE_HU["necrosis"][i], LIPIODOL_HU])
    nearest = np.abs(hu[:, None] - tissues[None]).argmin(1)
    tumor = (nearest > 0).sum()
    return float((nearest == 1).sum() / tumor) if tumor else 0.0


def candidate_protocols(patient: L.LiverPatient, k: int) -> list[Protocol]:
    """`k` conflict-free protocols (<= 2 drugs, <= 2 embolics) evenly spaced in true viable fraction."""
    space = [p for p in L.protocol_space(max_drugs=2, max_embolics=2) if not conflicts(p.items)]
    space.sort(key=lambda p: L.outcome(patient, p).viable_fraction)
    picks = np.unique(np.linspace(0, len(space) - 1, k).round().astype(int))
    return [space[i] for i in picks]


def model_space_case(preprocessing, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The case's pre-treatment CT (scaled), whole-lesion mask and voxel-to-RAS affine in model space."""
    data = preprocessing({"pre": entry["pre_image"], "label": entry["pre_label"]})
    return data["pre"][0].numpy(), data["label"][0].numpy() > 0, np.asarray(data["pre"].affine)


def case_features(preprocessing, entry: dict, pre: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What a prepared case's pre-treatment scan shows of its lesion, as the app computes it on a study
    (`oncoplan.tace.lesion_features.study_features`) and as the response head is fitted: the whole model-space
    planning volume and tumour `mask` and, where the case was prepared with one, the arterial phase."""
    from oncoplan.tace.lesion_features import study_features

    phase = str(entry.get("phase") or "PVP")
    arterial = None
    if entry.get("pre_arterial_image") and phase == "PVP":
        arterial, _, _ = model_space_case(preprocessing, {**entry, "pre_image": entry["pre_arterial_image"]})
    return study_features(pre, mask, phase, arterial)


def simulate_cases(
    network: torch.nn.Module,
    sampler,
    preprocessing,
    datalist: list[dict],
    roi_size: list[int],
    output_dir: str | Path,
    protocol: str | None = None,
    samples: int = 5,
    steps: int = 25,
    seed: int = 0,
    guidance: float = 1.0,
) -> None:
    """Simulate each case's post-treatment patch (its own recorded protocol, or `protocol`) and save
    every sample and their mean as NIfTI (HU) on the patch's own grid in model space."""
    import nibabel as nib

    from oncoplan.tace.dynamics import simulate

    sampler.set_timesteps(steps)
    out = Path(output_dir)
    for entry in tqdm(datalist, desc="simulate", unit="case"):
        chosen = protocol or entry.get("protocol")
        if not chosen:
            raise InputError(f"case {entry['case_id']}: no protocol recorded; give one with --protocol")
        pre, mask, affine = model_space_case(preprocessing, entry)
        pre_patch, mask_patch, start = window_around(pre, mask, tuple(roi_size))
        response = network.response(torch.as_tensor([multi_hot(chosen)]))
        posts = (
            simulate(
                network,
                torch.as_tensor(pre_patch)[None, None],
                torch.as_tensor(mask_patch, dtype=torch.float32)[None, None],
                response,
                sampler,
                samples,
                seed,
                guidance,
            )[0, :, 0]
            .clamp(-1, 1)
            .numpy()
        )
        patch_affine = affine.copy()
        patch_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        hu = to_hu(posts)
        case_dir = out / str(entry["case_id"])
        case_dir.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu.mean(0).astype(np.float32), patch_affine), case_dir / "simulated_post_mean.nii.gz")
        for i, sample in enumerate(hu):
            nib.save(nib.Nifti1Image(sample.astype(np.float32), patch_affine), case_dir / f"simulated_post_{i}.nii.gz")
        (case_dir / "protocol.txt").write_text(str(Protocol.parse(chosen)) + "\n")
        predicted = dict(zip(RESPONSE, (round(float(v), 4) for v in response[0]), strict=True))
        (case_dir / "predicted_response.json").write_text(json.dumps(predicted, indent=1) + "\n")


def ground_truth(prepared: Path, entry: dict, cohort: Path | None) -> L.LiverPatient:
    root = cohort or Path(json.loads((prepared / "datalist.json").read_text())["cohort"])
    truth_path = root / str(entry["case_id"]) / "truth.json"
    if not truth_path.exists():
        raise InputError(f"{truth_path}: no ground truth (protocol sensitivity needs a synthetic cohort)")
    rows = pd.read_csv(root / "cohort.csv").set_index("TCIA_ID")
    return L.patient_from_record(json.loads(truth_path.read_text()), rows.loc[entry["case_id"]].to_dict())


def protocol_sensitivity(
    world: WorldModel,
    preprocessing,
    prepared: str | Path,
    output_dir: str | Path,
    k: int = 8,
    cohort: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Score every case (see module doc); write protocol_sensitivity.json/.md to `output_dir`."""
    prepared = Path(prepared)
    entries = load_prepared(prepared)[:limit] if limit else load_prepared(prepared)
    cases = []
    for entry in tqdm(entries, desc="protocol sensitivity", unit="case"):
        patient = ground_truth(prepared, entry, Path(cohort) if cohort else None)
        protocols = candidate_protocols(patient, k)
        truth = [L.outcome(patient, p).viable_fraction for p in protocols]
        pre, mask, _ = model_space_case(preprocessing, entry)
        pre_window, mask_window, _ = window_around(pre, mask, world.window)
        features = case_features(preprocessing, entry, pre, mask)
        matrix = np.array([multi_hot(p) for p in protocols])
        sim = world.simulate(pre_window, mask_window, matrix, seed, features=features)
        simulated = sim.viable_fraction.mean(axis=1)
        lesion = mask_window[sim.patch_slices] > 0
        by_intensity = np.array(
            [
                [intensity_viable_fraction(w[sim.patch_slices], lesion, str(entry.get("phase", "PVP"))) for w in ws]
                for ws in sim.windows
            ]
        ).mean(axis=1)
        # Outside the lesion the post scan is the pre scan plus new noise: a sanity floor for the sampler.
        outside = to_hu(pre_window[sim.patch_slices][~lesion])
        background = np.abs(to_hu(sim.windows[(slice(None), slice(None), *sim.patch_slices)][..., ~lesion]) - outside)
        cases.append(
            {
                "case_id": entry["case_id"],
                "spearman": spearman(simulated, truth),
                "spearman_intensity": spearman(by_intensity, truth),
                "protocols": [str(p) for p in protocols],
                "true_viable_fraction": [round(t, 4) for t in truth],
                "simulated_viable_fraction": [round(float(s), 4) for s in simulated],
                "predicted_viable_share": [round(float(r[0]), 4) for r in sim.response],
                "simulated_spread": [round(float(s), 4) for s in sim.viable_fraction.std(axis=1)],
                "intensity_viable_fraction": [round(float(s), 4) for s in by_intensity],
                "background_error_hu": round(float(background.mean()), 1),
                "spearman_response_head": spearman(sim.response[:, 0], truth),
            }
        )
    summary: dict[str, object] = {
        "n_cases": len(cases),
        "protocols_per_case": k,
        "samples_per_protocol": int(world.samples),
        "guidance": world.guidance,
        "background_error_hu": float(np.mean([c["background_error_hu"] for c in cases])) if cases else float("nan"),
    }
    for key in ("spearman", "spearman_intensity", "spearman_response_head"):
        rhos = [c[key] for c in cases]
        summary[f"{key}_mean"] = list(bootstrap_ci(rhos))
        summary[f"{key}_median"] = float(np.median(rhos)) if rhos else float("nan")
        summary[f"{key}_cases_above_0_5"] = int(sum(r > 0.5 for r in rhos))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol_sensitivity.json").write_text(json.dumps({"summary": summary, "cases": cases}, indent=1))
    rows = []
    for key, name in (
        ("spearman", "assistant segmentation"),
        ("spearman_intensity", "intensity (no assistant)"),
        ("spearman_response_head", "response head alone (the renderer's condition)"),
    ):
        m = summary[f"{key}_mean"]
        rows.append(
            f"| {name} | {len(cases)} | {m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}] | {summary[f'{key}_median']:.3f} | "
            f"{summary[f'{key}_cases_above_0_5']}/{len(cases)} |"
        )
    (out / "protocol_sensitivity.md").write_text(
        f"Protocol sensitivity on `{prepared}` (synthetic): {k} protocols x {world.samples} samples per case, "
        f"guidance {world.guidance:g}.\n"
        f"Mean absolute HU difference from the pre scan outside the lesion (sampler sanity, noise level): "
        f"{summary['background_error_hu']:.1f} HU.\n\n"
        "| read-out | cases | Spearman mean [bootstrap 95% CI] | median | cases > 0.5 |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return summary


def spearman(simulated: np.ndarray, truth: Sequence[float] | np.ndarray) -> float:
    """Spearman correlation of a score with the truth; 0 when the score is constant (no ranking)."""
    return float(spearmanr(simulated, truth).statistic) if np.ptp(simulated) > 0 else 0.0

"""Every config of the CTV bundle runs with `python -m monai.bundle run` (tiny sizes); the checks every
bundle passes (metadata, the 2-rank gloo run, the TensorRT fallback) are in tests/test_bundles.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oncoplan.ctv.text_encoder import is_student_key

from .bundle_harness import CTV, CTV_TINY, Paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> Paths:
    return CTV.trained(request)


def test_train_writes_checkpoint_and_curve(trained: Paths) -> None:
    assert (trained["models"] / "model.pt").stat().st_size > 0
    assert (trained["tmp"] / "eval" / "training_curve.png").exists()
    state = torch.load(trained["models"] / "model.pt", weights_only=True)
    lm = {k: v for k, v in state.items() if k.startswith("text.lm.")}
    assert "text.prompts" in state and lm and all("lora_" in k for k in lm)  # the LM itself is not saved
    student = {k: v for k, v in state.items() if is_student_key(k)}
    assert {"text.prompts_delta", "text.seg_delta"} <= set(student)
    assert all(not v.any() for k, v in student.items() if "lora_A" not in k)  # train.json leaves the student at zero


def test_paraphrase_config_trains_the_student_alone_and_always_from_the_teacher(trained: Paths) -> None:
    """configs/paraphrase.json over inference.json, from train.json's checkpoint: only the student (adapters,
    prompt and [SEG] shifts) trains; the U-Net, prompts, [SEG] and standardiser are the ones it started from;
    the curve is written. Distilling its output again gives the same weights: each run starts from the teacher."""
    from oncoplan.runtime.bundles import checkpoint_state

    para = trained["tmp"] / "para"
    args = [
        *("--config_file", CTV.configs("inference.json", "paraphrase.json"), *CTV_TINY),
        *("--paraphrase_steps", "4", "--eval_every", "2", "--eval_notes", "8", "--paraphrase_batch_size", "2"),
    ]
    first = ("--init_ckpt", str(trained["models"] / "model.pt"), "--output_ckpt", str(para / "model.pt"))
    log = CTV.run([*args, *first, "--curve_path", str(para / "curve.csv")])
    assert "held-out nearest-template accuracy" in log
    start, tuned = checkpoint_state(trained["models"] / "model.pt"), checkpoint_state(para / "model.pt")
    assert set(tuned) == set(start)
    changed = {k for k, v in start.items() if not torch.equal(v, tuned[k])}
    assert changed and all(is_student_key(k) for k in changed)  # prompts, [SEG], standardiser: the teacher's
    assert {"text.prompts_delta", "text.seg_delta"} <= changed and any("lora_B" in k for k in changed)
    assert len((para / "curve.csv").read_text().splitlines()) == 4  # header, step 0, 2, 4
    again = ("--init_ckpt", str(para / "model.pt"), "--output_ckpt", str(para / "again.pt"))
    CTV.run([*args, *again, "--curve_path", str(para / "again.csv")])
    assert all(torch.equal(v, checkpoint_state(para / "again.pt")[k]) for k, v in tuned.items())


def test_inference_writes_masks_on_the_input_grid(trained: Paths) -> None:
    import nibabel as nib

    CTV.run_inference(trained, "pred", "inference.json")
    preds = sorted((trained["tmp"] / "pred").glob("*_ctv.nii.gz"))
    assert len(preds) == 3
    case = preds[0].name.replace("_ctv.nii.gz", "")
    image = nib.load(trained["cache"] / trained["data"].name / f"{case}.nii.gz")
    pred = nib.load(preds[0])
    assert pred.shape[:3] == image.shape and abs(pred.affine - image.affine).max() < 1e-3


def test_evaluate_config_reports_dice(trained: Paths) -> None:
    log = CTV.run_inference(trained, "pred", "inference.json", "evaluate.json")
    assert "val_mean_dice" in log
    assert (trained["tmp"] / "pred" / "val_mean_dice_raw.csv").exists()


def test_vision_only_baseline_trains_from_the_same_config(trained: Paths) -> None:
    args = CTV.train(trained, trained["models"], trained["tmp"] / "eval", "1")
    CTV.run(["--config_file", "configs/train.json", "--text_guided", "False", *args])
    state = torch.load(trained["models"] / "vision_only.pt", weights_only=True)
    assert not any(k.startswith("text.") for k in state)


def test_oncoplan_evaluation_reports_cis_sites_and_counterfactuals(trained: Paths, tmp_path: Path) -> None:
    """`oncoplan evaluate ctv`'s pipeline on the tiny model: every metric, its CI, the flips."""
    from oncoplan.training.ctv.evaluate import evaluate_cohorts, write_report

    overrides = {
        "channels": [4, 8, 8, 16, 16],
        "roi_size": [32, 32, 16],
        "pixdim": [8.0, 8.0, 16.0],
        "n_prompts": 1,
        "prompt_length": 2,
        "ckpt_path": str(trained["models"] / "model.pt"),
    }
    result = evaluate_cohorts(
        CTV.root,
        {"internal": str(trained["data"])},
        {"text-guided": {"overrides": overrides}},
        cache_dir=str(trained["cache"]),
        progress=False,
    )
    rows = result["models"]["text-guided"]["cases"]
    assert len(rows) == 3 and all(0.0 <= r["dice"] <= 1.0 and r["hd95_cm"] >= 0 for r in rows)
    summary = result["models"]["text-guided"]["summary"]["internal"]
    for metric in ("dice", "iou", "hd95_cm"):
        lo, hi = summary[metric]["ci95"]
        assert lo <= summary[metric]["mean"] <= hi
    unilateral = [r for r in rows if "laterality_moved" in r]
    assert all(0.0 <= r["laterality_moved"] <= 1.0 for r in unilateral)
    assert all(r["nodal_direction"] in ("add", "remove") for r in rows)
    js, md = write_report(result, tmp_path)
    assert "| text-guided | internal | 3 |" in md.read_text()
    assert (js.stat().st_size > 0) and "laterality flip" in md.read_text()


def test_efficiency_models_are_found_by_fraction(tmp_path: Path) -> None:
    from oncoplan.training.ctv.evaluate import efficiency_models

    folder = tmp_path / "models" / "efficiency"
    folder.mkdir(parents=True)
    for name in ("model_f60.pt", "model_f40.pt", "vision_only_f40.pt"):
        (folder / name).write_bytes(b"")
    found = efficiency_models(tmp_path)
    assert list(found) == ["text-guided 40%", "text-guided 60%", "vision-only 40%"]
    assert found["vision-only 40%"] == {"model_name": "efficiency/vision_only_f40.pt", "text_guided": False}


def test_efficiency_table_and_plot_by_fraction(tmp_path: Path) -> None:
    """Table 3's layout: a row per model and fraction, the full models as 100%, and the relative
    gain of the text-guided model at each fraction; the Dice-vs-fraction plot is written."""
    from oncoplan.training.ctv.evaluate import efficiency_markdown, write_report

    def summary(dice: float) -> dict:
        m = {"mean": dice, "ci95": [dice - 0.05, dice + 0.05]}
        return {site: {"cases": 4, "dice": m, "iou": m, "hd95_cm": m} for site in ("internal", "external")}

    models = {
        "text-guided": summary(0.9),
        "vision-only": summary(0.6),
        "text-guided 40%": summary(0.8),
        "vision-only 40%": summary(0.4),
    }
    result = {"cohorts": {}, "models": {k: {"summary": v, "cases": []} for k, v in models.items()}}
    table = efficiency_markdown(result)
    assert "| 40% | text-guided | 0.800 (0.750-0.850) |" in table
    assert "| 40% | gain | +100% | +100% | +100% | +100% |" in table
    assert "| 100% | gain | +50% |" in table
    assert table.index("| 40% |") < table.index("| 100% |")
    write_report(result, tmp_path)
    assert (tmp_path / "ctv_efficiency.png").stat().st_size > 10_000
    assert (tmp_path / "ctv_efficiency.md").read_text() == table
    no_fractions = {"cohorts": {}, "models": {"text-guided": {"summary": summary(0.9), "cases": []}}}
    assert efficiency_markdown(no_fractions) == ""

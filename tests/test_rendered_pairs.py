"""Rendered pairs for the assistant: each rendering of the world model is labelled with the layout it was
drawn from, inside the pre-treatment label map, and the assistant's fine-tuning config trains on them
beside real cases (tiny networks, random weights: the plumbing and the geometry, not the model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from oncoplan.runtime.bundles import bundle_parser
from oncoplan.tace.dynamics import layout_labels, multi_hot, to_hu
from oncoplan.tace.world_model import WorldModel, window_around
from oncoplan.training.tace.data import load_prepared, segmentation_items
from oncoplan.training.tace.dynamics_eval import case_features
from oncoplan.training.tace.rendered_pairs import hu_scale, main, pair_labels

from .helpers import run_bundle, tiny_tace_models

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "tace_assistant"


@pytest.fixture(scope="module")
def pairs(prepared_liver: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rendered_pairs")
    models = tiny_tace_models(tmp / "models")
    args = ["--prepared", str(prepared_liver), "--out", str(tmp / "pairs"), "--protocols", "2", "--steps", "2"]
    args += ["--dynamics", str(models / "tace_dynamics"), "--assistant", str(models / "tace_assistant")]
    assert main(args) == 0
    return {"tmp": tmp, "models": models, "pairs": tmp / "pairs", "prepared": prepared_liver}


def test_to_hu_inverts_the_preprocessing_scale(pairs) -> None:
    scale = hu_scale(bundle_parser(pairs["models"] / "tace_dynamics").get_parsed_content("preprocessing"))
    assert scale == (-175.0, 600.0, -1.0, 1.0)
    np.testing.assert_allclose(to_hu(np.array([-1.0, 0.0, 1.0]), scale), [-175.0, 212.5, 600.0])


def test_pair_labels_replace_only_the_lesion_in_the_patch() -> None:
    window = np.ones((6, 6, 6), np.uint8)
    window[2:4, 2:4, 2:4] = 2  # pre-treatment lesion
    layout = np.zeros((4, 4, 4), np.uint8)
    layout[1:3, 1:3, 1:3] = 3  # the layout turns it to necrosis
    layout[1, 1, 1] = 1  # and shrinks one voxel away (liver)
    out = pair_labels(window, layout, (slice(1, 5),) * 3)
    assert out[2, 2, 2] == 1 and out[3, 3, 3] == 3 and (out == 2).sum() == 0
    assert (out[window == 1] == 1).all()  # nothing outside the lesion changes
    assert window[2, 2, 2] == 2  # the input is not modified


def test_each_rendering_is_labelled_with_its_layout(pairs) -> None:
    entries = load_prepared(pairs["pairs"])
    prepared = {str(e["case_id"]): e for e in load_prepared(pairs["prepared"])}
    assert len(entries) == 2 * len(prepared)
    dyn = bundle_parser(pairs["models"] / "tace_dynamics")
    preprocessing = dyn.get_parsed_content("preprocessing")
    world = WorldModel.from_bundles(pairs["models"] / "tace_dynamics", pairs["models"] / "tace_assistant", 1, 2)
    lo = [(w - p) // 2 for w, p in zip(world.window, world.patch, strict=True)]
    patch = tuple(slice(a, a + p) for a, p in zip(lo, world.patch, strict=True))
    outside = np.ones(world.window, bool)
    outside[patch] = False
    for entry in entries:
        image = np.asarray(nib.load(entry["post_image"]).dataobj)
        labels = np.asarray(nib.load(entry["post_label"]).dataobj)
        assert image.shape == labels.shape == world.window
        source = prepared[entry["source_case"]]
        data = Compose(preprocessing.transforms[:-1])({"pre": source["pre_image"], "label": source["pre_label"]})
        pre, full = data["pre"][0].numpy(), data["label"][0].numpy()
        pre_window, mask_window, _ = window_around(pre, full >= 2, world.window)
        label_window, _, _ = window_around(full, full >= 2, world.window, fill=0)
        # Outside the rendered patch the pair is the pre-treatment scan, in HU.
        np.testing.assert_allclose(image[outside], to_hu(pre_window[outside], hu_scale(preprocessing)), atol=1e-3)
        np.testing.assert_array_equal(labels[outside], label_window[outside])
        # Inside it the lesion is the layout drawn for this protocol and seed.
        # ... for this lesion: the response head reads the case's scan as the planner's does.
        features = case_features(preprocessing, source, pre, full >= 2)
        response = world.dynamics.response(torch.as_tensor([multi_hot(entry["protocol"])]), features)
        lesion = torch.as_tensor(mask_window[patch], dtype=torch.float32)[None, None]
        drawn = layout_labels(lesion, response.detach(), 1, int(entry["seed"]))[0]
        inside = mask_window[patch] > 0
        np.testing.assert_array_equal(labels[patch][inside], drawn[inside])
        assert (labels[patch][~inside] == label_window[patch][~inside]).all()
        assert inside.any()


def test_a_head_that_reads_the_scan_renders_each_case_with_its_own_features(pairs, tmp_path: Path) -> None:
    """With a response head that reads the lesion's features (liver-3), each rendering's layout is the response
    for that case's scan, not for the average lesion: the label map matches the one drawn with the features."""
    from oncoplan.tace.lesion_features import FEATURES

    dynamics = tmp_path / "tace_dynamics"
    shutil.copytree(pairs["models"] / "tace_dynamics", dynamics)
    config = json.loads((dynamics / "configs" / "inference.json").read_text())
    config.update(response_features=len(FEATURES), response_link="log")
    (dynamics / "configs" / "inference.json").write_text(json.dumps(config))
    net = bundle_parser(dynamics, overrides={"device": "$torch.device('cpu')"}).get_parsed_content("network")
    state = torch.load(pairs["models"] / "tace_dynamics" / "models" / "model.pt", weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("response_head.")}, strict=False)
    rng = np.random.default_rng(0)  # a head whose response moves with the features: fitted on made-up pairs
    hots = rng.integers(0, 2, (200, len(multi_hot("Cisplatin; Lipiodol")))).astype(float)
    feats = rng.normal(size=(200, len(FEATURES)))
    shares = np.clip(0.5 + 0.2 * np.tanh(feats[:, :1] * hots[:, :1]), 0.05, 0.95)
    responses = np.c_[shares, (1 - shares) / 2, (1 - shares) / 2, np.full((200, 1), 0.8)]
    net.response_head.fit(hots, responses, feats, alpha=1e-2)
    torch.save(net.state_dict(), dynamics / "models" / "model.pt")
    out = tmp_path / "pairs"
    args = ["--prepared", str(pairs["prepared"]), "--out", str(out), "--protocols", "2", "--steps", "2"]
    assert main([*args, "--dynamics", str(dynamics), "--assistant", str(pairs["models"] / "tace_assistant")]) == 0
    world = WorldModel.from_bundles(dynamics, pairs["models"] / "tace_assistant", 1, 2)
    preprocessing = bundle_parser(dynamics).get_parsed_content("preprocessing")
    prepared = {str(e["case_id"]): e for e in load_prepared(pairs["prepared"])}
    moved = 0
    for entry in load_prepared(out):
        source = prepared[entry["source_case"]]
        data = Compose(preprocessing.transforms[:-1])({"pre": source["pre_image"], "label": source["pre_label"]})
        pre, full = data["pre"][0].numpy(), data["label"][0].numpy()
        features = case_features(preprocessing, source, pre, full >= 2)
        hot = torch.as_tensor([multi_hot(entry["protocol"])])
        own, average = world.dynamics.response(hot, features), world.dynamics.response(hot)
        moved += int(not torch.allclose(own, average))
        _, mask_window, _ = window_around(pre, full >= 2, world.window)
        patch = world._patch()
        lesion = torch.as_tensor(mask_window[patch], dtype=torch.float32)[None, None]
        drawn = layout_labels(lesion, own.detach(), 1, int(entry["seed"]))[0]
        labels = np.asarray(nib.load(entry["post_image"].replace("images", "labels")).dataobj)
        inside = mask_window[patch] > 0
        np.testing.assert_array_equal(labels[patch][inside], drawn[inside])
    assert moved > 0  # the features changed the response, so the check above can tell the two apart


def test_segmentation_items_read_pairs_beside_real_cases(pairs) -> None:
    items = segmentation_items([pairs["prepared"], pairs["pairs"]], ("post",))
    real = load_prepared(pairs["prepared"])
    assert len(items) == 3 * len(real)
    assert all(Path(i["image"]).exists() and Path(i["label"]).exists() for i in items)


def test_finetune_config_trains_on_real_and_rendered_cases(pairs) -> None:
    data, models = pairs["tmp"] / "data", pairs["tmp"] / "ckpt"
    data.mkdir()
    for name, source in (("liver_train", "prepared"), ("liver_val", "prepared")):
        (data / name).symlink_to(pairs[source])
        (data / f"{name}_rendered").symlink_to(pairs["pairs"])
    models.mkdir()
    shutil.copy2(pairs["models"] / "tace_assistant" / "models" / "model.pt", models / "model.pt")
    before = (models / "model.pt").read_bytes()
    tiny = json.loads((pairs["models"] / "tace_assistant" / "configs" / "inference.json").read_text())
    log = run_bundle(
        BUNDLE,
        [
            "--config_file",
            "['configs/train.json','configs/finetune_rendered.json']",
            "--dataset_dir",
            str(data),
            "--ckpt_dir",
            str(models),
            "--output_dir",
            str(pairs["tmp"] / "eval"),
            "--epochs",
            "1",
            "--filters",
            json.dumps(tiny["filters"]),
            "--roi_size",
            json.dumps(tiny["roi_size"]),
            "--pixdim",
            json.dumps(tiny["pixdim"]),
        ],
    )
    assert "pretrain_loss" not in log  # fine-tuning only: no pre-training epochs
    assert (models / "model.pt").read_bytes() != before  # trained from the given weights and saved
    assert (pairs["tmp"] / "eval" / "training_curve.png").exists()


def test_read_as_table_puts_a_faithful_reading_on_the_diagonal() -> None:
    from oncoplan.tace.labels import LABELS
    from oncoplan.training.tace.render_fidelity import read_as, summarise

    layout = np.array([LABELS["liver"], LABELS["viable"], LABELS["viable"], LABELS["necrosis"]])
    table = read_as(layout, layout)
    assert set(table) == {"liver", "viable", "necrosis"}  # Lipiodol is not in this layout
    assert all(row[name] == 1.0 for name, row in table.items())
    misread = read_as(layout, np.array([LABELS["viable"], LABELS["viable"], LABELS["necrosis"], LABELS["necrosis"]]))
    assert misread["liver"]["viable"] == 1.0 and misread["viable"] == pytest.approx(
        {"liver": 0.0, "viable": 0.5, "necrosis": 0.5, "lipiodol": 0.0}
    )
    summary = summarise(
        [
            {"read_as": table, "spearman_meant_vs_read": 1.0},
            {"read_as": misread, "spearman_meant_vs_read": 0.0},
        ]
    )
    assert summary["read_as"]["liver"]["viable"] == 0.5
    assert summary["spearman_meant_vs_read"]["mean"] == 0.5


def test_render_fidelity_reads_every_protocol_of_a_case(pairs) -> None:
    from oncoplan.training.tace.render_fidelity import case_fidelity

    entry = load_prepared(pairs["prepared"])[0]
    dyn = bundle_parser(pairs["models"] / "tace_dynamics")
    data = Compose(dyn.get_parsed_content("preprocessing").transforms[:-1])(
        {"pre": entry["pre_image"], "label": entry["pre_label"]}
    )
    world = WorldModel.from_bundles(pairs["models"] / "tace_dynamics", pairs["models"] / "tace_assistant", 2, 2)
    pre, full = data["pre"][0].numpy(), data["label"][0].numpy()
    pre_window, mask_window, _ = window_around(pre, full >= 2, world.window)
    protocols = np.array([multi_hot("Epirubicin; Lipiodol"), multi_hot("Cisplatin; LC Beads")], np.float32)
    out = case_fidelity(world, pre_window, mask_window, protocols)
    assert world.samples == 2  # the one-sample reading leaves the world model as it was
    assert len(out["meant_viable_voxels"]) == len(out["read_viable_voxels"]) == 2
    assert -1.0 <= out["spearman_meant_vs_read"] <= 1.0
    for row in out["read_as"].values():
        assert 0.0 <= sum(row.values()) <= 1.0 + 1e-9  # shares of one compartment's voxels

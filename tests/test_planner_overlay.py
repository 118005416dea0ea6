"""The planner's choices over the TACE bundles live in the bundles (configs/planner.json), so the config list
`['configs/inference.json', 'configs/planner.json']` that `python -m monai.bundle run` takes gives the
network the planner runs, and the app reads nothing else from code."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigParser

from oncoplan.planner.models import planner_config, planner_overrides
from oncoplan.runtime.bundles import TACE_BUNDLES, bundle_parser, shipped_bundles


def _as_bundle_run(bundle: Path) -> ConfigParser:
    """What `monai.bundle run --config_file "[inference.json, planner.json]"` parses."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "planner.json")])
    parser.update({"bundle_root": str(bundle)})
    return parser


def test_the_bundle_config_list_gives_the_planners_network_settings() -> None:
    for role in ("dynamics", "assistant"):
        bundle = shipped_bundles() / TACE_BUNDLES[role]
        app = bundle_parser(bundle, overrides=planner_overrides(role, path=bundle))
        alone = _as_bundle_run(bundle)
        for key in planner_config(role):
            assert alone.get_parsed_content(key) == app.get_parsed_content(key), (role, key)
        assert alone.get_parsed_content("ckpt_path") == app.get_parsed_content("ckpt_path")


def test_the_planner_overlays_are_what_the_planner_docs_measured() -> None:
    assert planner_config("dynamics") == {"anchor_strength": 0.3}
    assert planner_config("assistant") == {"model_name": "model_anchored.pt"}
    assert planner_config("survival") == {}  # the survival bundle runs as its inference.json says
    ckpt = _as_bundle_run(shipped_bundles() / "tace_assistant").get_parsed_content("ckpt_path")
    assert Path(ckpt).name == "model_anchored.pt" and Path(ckpt).is_file()


def test_a_sites_bundle_without_the_overlay_runs_as_its_own_configs(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    assert planner_config("dynamics", tmp_path) == {}
    assert planner_overrides("dynamics", {"steps": 5}, path=tmp_path) == {"steps": 5}

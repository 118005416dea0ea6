"""What every bundle passes (tests/bundle_harness.py: BUNDLES): metadata.json verifies against the
offline schema, the multi-GPU config trains on 2 ranks with gloo, and without a GPU the TensorRT overlay
falls back to the eager network and still writes its outputs. Each bundle's own behaviour is in its file
(tests/test_<bundle>_bundle.py), which shares the harness's trained model."""

from __future__ import annotations

import pytest

from .bundle_harness import (
    ASSISTANT,
    BUNDLES,
    CTV,
    DYNAMICS,
    METADATA_SCHEMA,
    Bundle,
    assert_tensorrt_fell_back,
    torchrun,
)
from .conftest import shared_file
from .helpers import verify_metadata

pytestmark = pytest.mark.slow


def _each(bundles: tuple[Bundle, ...]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("bundle", bundles, ids=[b.name for b in bundles])


@pytest.mark.needs_shared
@_each(BUNDLES)
def test_metadata_verifies_offline(bundle: Bundle) -> None:
    verify_metadata(bundle.root, shared_file(METADATA_SCHEMA))


@_each(BUNDLES)
def test_multi_gpu_config_runs_two_ranks_with_gloo(bundle: Bundle, request: pytest.FixtureRequest) -> None:
    trained = bundle.trained(request)  # its data (and the CTV's image cache) ready
    ddp = trained["tmp"] / "ddp"
    args = bundle.train(trained, ddp, trained["tmp"] / "ddp_eval", bundle.ddp_epochs)
    log = bundle.run(
        ["--config_file", bundle.configs("train.json", "multi_gpu_train.json"), *args], torchrun(bundle.master_port)
    )
    assert (ddp / "model.pt").exists(), log[-2000:]


# The survival bundle's inference test runs through its TensorRT overlay (tests/test_tace_survival_bundle.py).
@_each((CTV, ASSISTANT, DYNAMICS))
def test_tensorrt_config_falls_back_cleanly_without_a_gpu(bundle: Bundle, request: pytest.FixtureRequest) -> None:
    trained = bundle.trained(request)
    log = bundle.run_inference(trained, "trt", "inference.json", "inference_trt.json")
    assert_tensorrt_fell_back(log)
    assert list((trained["tmp"] / "trt").glob(bundle.outputs)), f"no {bundle.outputs} written\n{log[-2000:]}"

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # `./run test` runs two workers: one thread each, before numpy/torch load
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

from pathlib import Path

import pytest

from oncoplan.training.synth.cohort import generate_cohort

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_file(relative: str) -> Path:
    """A file of ../shared (the papers, the real HCC-TACE-Seg table, the bundle schema). Missing, it is a
    failure that says so, never a silent skip: deselect these tests with -m "not needs_shared" instead."""
    path = SHARED / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: ../shared must sit beside the checkout (or run -m 'not needs_shared')")
    return path


@pytest.fixture(scope="session")
def breast_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("breast") / "cohort"
    return generate_cohort("breast", out, cases=3, seed=3, size="small", progress=False)


@pytest.fixture(scope="session")
def liver_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("liver") / "cohort"
    return generate_cohort("liver", out, cases=2, seed=3, size="small", progress=False)


@pytest.fixture(scope="session")
def liver2_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A liver-2 cohort: the pre-treatment scans show part of the hidden response biology."""
    out = tmp_path_factory.mktemp("liver2") / "cohort"
    return generate_cohort("liver", out, cases=2, seed=3, size="small", progress=False, generator="liver-2")


@pytest.fixture(scope="session")
def prepared_liver(liver_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The liver cohort registered and resampled (3 mm) by the TACE preprocessing."""
    from oncoplan.training.tace.prepare import prepare_cohort

    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_cohort(liver_cohort, out, spacing=(3.0, 3.0, 3.0), quiet=True)
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc for each test module that asks for one (the listener tests' PACS)."""
    from .pacs import Orthanc

    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()

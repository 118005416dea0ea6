"""Bad input: one line on stderr naming the problem, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _synth(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oncoplan", "synth", *args, "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for w in words:
        assert w in lines[0]


def test_unknown_kind(tmp_path: Path) -> None:
    out = _synth("tumor", "--out", str(tmp_path / "x"), "--cases", "2")
    _one_line_error(out, "tumor")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cases", ["0", "-3", "two"])
def test_zero_negative_or_non_numeric_cases(tmp_path: Path, cases: str) -> None:
    out = _synth("breast", "--out", str(tmp_path / "x"), "--cases", cases)
    _one_line_error(out, "--cases")
    assert not (tmp_path / "x").exists()


def test_unknown_site(tmp_path: Path) -> None:
    out = _synth("liver", "--out", str(tmp_path / "x"), "--cases", "1", "--site", "mars")
    _one_line_error(out, "mars")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = _synth("breast", "--out", str(blocker / "cohort"), "--cases", "1")
    _one_line_error(out, str(blocker / "cohort"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_non_empty_output_folder_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    out = _synth("breast", "--out", str(tmp_path), "--cases", "1")
    _one_line_error(out, "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oncoplan.training.synth import cohort, write_breast

    calls = {"n": 0}
    real = write_breast.write_case

    def fail_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(write_breast, "write_case", fail_on_second)
    with pytest.raises(OSError):
        cohort.generate_cohort("breast", tmp_path / "out", cases=3, seed=1, size="small", progress=False)
    assert list(tmp_path.iterdir()) == []

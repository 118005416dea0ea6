"""Runs an OncoPlan app the SDK's way (`python -m <app> -i IN -o OUT -m MODELS` or HOLOSCAN_* variables).

Around the Holoscan graph it adds what a hospital needs: the input folder is checked first
(one clear line and exit 2 on bad input), and results are written to a scratch folder and
moved into OUT only when the whole graph succeeded, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from oncoplan.apps import console
from oncoplan.errors import InputError
from oncoplan.operators.input_check import check_input_folder
from oncoplan.redact import scrub_every_record
from oncoplan.runtime.bundles import shipped_bundles


def _pop(argv: list[str], flag: str) -> str | None:
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise InputError(f"{flag} needs a value")
        value = argv[i + 1]
        del argv[i : i + 2]
        return value
    return None


def _run_graph(app_cls, argv: list[str], app_kwargs: dict) -> None:
    # Holoscan logs while it tears a graph down; destroying the app here keeps those lines
    # before our own error line, which must be the last thing on stderr.
    app = app_cls(argv, **app_kwargs)
    try:
        app.run()
    finally:
        del app
        gc.collect()


def run_app(app_cls, input_path: Path, output_path: Path, model_path: Path | None, **app_kwargs) -> list[Path]:
    """Run the app's graph on one study; returns the files it wrote into `output_path`."""
    # The series rules the app's selector applies, so a study it cannot use is one line before the graph.
    check_input_folder(input_path, app_cls.organ, app_kwargs.get("series"))
    if hasattr(app_cls, "check_note"):  # so is a clinical note the app cannot read
        app_cls.check_note(input_path, app_kwargs.get("note"))
    if hasattr(app_cls, "check_options"):  # and the app's other options (clinical data, policy)
        app_cls.check_options(input_path, app_kwargs)
    # No -m: the shipped bundles (each app finds its own under MODELS/<bundle name>).
    models = Path(model_path or shipped_bundles())
    if hasattr(app_cls, "check_models"):  # missing weights are one line before the graph starts
        app_cls.check_models(models)
    from oncoplan.runtime.backends import app_backends

    app_backends()  # so is a bad $ONCOPLAN_BACKENDS
    output_path = Path(output_path).absolute()
    try:
        output_path.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=output_path))
    except OSError as exc:
        raise InputError(f"{output_path}: cannot write the output folder ({exc.strerror or exc})") from None
    try:
        # Holoscan drops argv[0] (the interpreter), as for [sys.executable, script, *args].
        argv = [sys.executable, app_cls.__module__, "-i", str(input_path), "-o", str(scratch)]
        argv += ["-m", str(models), *console.graph_log_level()]
        _run_graph(app_cls, argv, app_kwargs)
        written = sorted(p for p in scratch.iterdir() if p.is_file() and not p.name.startswith("."))
        if not written:
            raise RuntimeError(f"{app_cls.__name__} wrote no output")
        out = []
        for p in written:
            os.replace(p, output_path / p.name)
            out.append(output_path / p.name)
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(app_cls, argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m oncoplan.apps.<name>`."""
    from monai.deploy.core import init_app_context

    scrub_every_record()  # no UID or date in any line, the SDK's and the libraries' included

    argv = list(sys.argv if argv is None else argv)
    if {"-h", "--help"} & set(argv[1:]):
        print(usage(app_cls, argv[0]))
        return 0
    try:
        # The app's own options (`cli_options`: flag -> keyword of its constructor), e.g. --note.
        options = getattr(app_cls, "cli_options", {})
        kwargs = {key: value for flag, key in options.items() if (value := _pop(argv, flag))}
        for flag, key in getattr(app_cls, "cli_flags", {}).items():  # options without a value, e.g. --allow-send
            if flag in argv:
                argv.remove(flag)
                kwargs[key] = True
        if not {"-m", "--model"} & set(argv) and not os.environ.get("HOLOSCAN_MODEL_PATH"):
            argv += ["-m", str(shipped_bundles())]  # the SDK's default ./models rarely exists: use the shipped bundles
        ctx = init_app_context(argv)
        for p in run_app(app_cls, Path(ctx.input_path), Path(ctx.output_path), ctx.model_path or None, **kwargs):
            print(p)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _prog(app_cls, prog: str) -> str:
    return f"python -m {app_cls.__module__.rsplit('.', 1)[0]}" if prog.endswith("__main__.py") else prog


def usage(app_cls, prog: str) -> str:
    """The SDK's options and the app's own (the SDK's parser knows only its own)."""
    own = [f"[{flag} VALUE]" for flag in getattr(app_cls, "cli_options", {})]
    own += [f"[{flag}]" for flag in getattr(app_cls, "cli_flags", {})]
    doc = (app_cls.__doc__ or "").strip().split("\n\n")[0]
    return (
        f"usage: {_prog(app_cls, prog)} [-i INPUT] [-o OUTPUT] [-m MODELS] "
        f"[-l LEVEL] [-w WORKDIR] {' '.join(own)}\n\n{doc}\n\n"
        "  -i, --input    folder with the study's DICOM files ($HOLOSCAN_INPUT_PATH)\n"
        "  -o, --output   folder for what the app writes ($HOLOSCAN_OUTPUT_PATH)\n"
        "  -m, --model    bundles folder ($HOLOSCAN_MODEL_PATH; default: the shipped bundles)\n"
        "  -l, --log-level  DEBUG, INFO (default), WARN, ERROR or CRITICAL\n"
        "  -w, --workdir  the SDK's work folder\n"
        "The app's own options are those of `oncoplan contour` / `oncoplan plan` (see their --help)."
    )


def exit_now(code: int) -> NoReturn:
    """Leave without the interpreter's teardown of MONAI's and Holoscan's modules (about 3 s a run,
    tests/bench/contour.py): by now every result is closed and moved into place; only stdio and the
    log handlers hold anything, and they are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

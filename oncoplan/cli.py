"""`oncoplan` command line: thin, lazy-importing dispatch to the packages that do the work."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .errors import InputError

log = logging.getLogger("oncoplan.cli")
SERIES_HELP = (
    "the series to work on, by SeriesInstanceUID or SeriesNumber, instead of the one the series rules choose "
    "(also $ONCOPLAN_SERIES; README: Series selection)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _synth(args: argparse.Namespace) -> int:
    from .training.synth.cohort import generate_cohort

    syntax, finish = args.transfer_syntax, None
    if syntax or args.pacs:
        from .training.synth.pacs import EXTRAS, check_transfer_syntax, pacs_shape_cohort

        if syntax:  # an unknown syntax or a missing encoder is one line before anything is generated
            check_transfer_syntax(syntax)
        extras = EXTRAS if args.pacs else ()

        def finish(scratch: Path) -> None:  # on the scratch cohort: a failure part-way leaves nothing
            pacs_shape_cohort(scratch, args.kind, syntax, extras)

    out = generate_cohort(
        args.kind,
        args.out,
        args.cases,
        args.seed,
        args.site,
        args.size,
        not args.quiet,
        args.protocols,
        finish,
        args.generator,
    )
    print(out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.kind != "ctv":
        raise InputError(f"unknown evaluation {args.kind!r}; choose ctv or tace")
    from .training.ctv.evaluate import run_evaluation

    cohorts = {k: str(v) for k, v in (("internal", args.internal), ("external", args.external)) if v}
    if not cohorts:
        raise InputError("give --internal and/or --external cohort folders")
    from .runtime.bundles import CTV_BUNDLE, shipped_bundles

    bundle = args.bundle or shipped_bundles() / CTV_BUNDLE
    js, md = run_evaluation(bundle, cohorts, args.out, args.efficiency, progress=not args.quiet)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


def _contour(args: argparse.Namespace) -> int:
    log.info("contouring the study in %s", args.input)  # before the app's imports (seconds on a CPU)
    from .apps.console import ctv_summary
    from .apps.ctv_contouring.app import CTVContouringApp
    from .apps.runner import run_app

    options = {
        "note": args.note,
        "series": args.series,
        "note_reader": args.note_reader,
        "allow_send": args.allow_send,
        "llm_model": args.llm_model,
        "llm_base_url": args.llm_base_url,
    }
    written = run_app(CTVContouringApp, args.input, args.output, args.model, **options)
    _closing(written, ctv_summary(written))
    return 0


def _closing(written: list[Path], summary: list[str]) -> None:
    """What was written (stdout: the paths, one a line, for scripts) and what it says."""
    for path in written:
        print(path)
    for line in summary:
        print(line)
    print("RESEARCH USE ONLY - not for clinical use.")


def _plan(args: argparse.Namespace) -> int:
    log.info("planning TACE on the study in %s", args.input)  # before the app's imports
    from .apps.console import plan_summary
    from .apps.runner import run_app
    from .apps.tace_planner.app import TacePlannerApp
    from .operators.tace_planning import parse_settings

    parse_settings(args.settings)  # a bad value is one line before any DICOM is read
    options = {
        "clinical": args.clinical,
        "policy": args.policy,
        "allow_send": args.allow_send,
        "llm_model": args.llm_model,
        "llm_base_url": args.llm_base_url,
    }
    written = run_app(
        TacePlannerApp, args.input, args.output, args.model, settings=args.settings, series=args.series, **options
    )
    _closing(written, plan_summary(written))
    return 0


def _package(args: argparse.Namespace) -> int:
    from .deploy.map_package import package

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    context, tag = package(
        args.app,
        args.out,
        tag=args.tag,
        build=not args.no_build,
        base=args.base,
        wheelhouse=args.wheelhouse,
        gpu=args.gpu,
        log=log,
    )
    print(f"build context: {context}")
    if tag:
        print(f"built image {tag}")
    else:
        reason = "" if args.no_build else "no container engine answered (podman info, docker info); "
        print(f"{reason}build it offline with: {context}/build.sh")
    return 0


def _listen(args: argparse.Namespace) -> int:
    from .deploy.listener import logs
    from .deploy.listener.config import load_config
    from .deploy.listener.service import Listener

    config = load_config(args.config)  # a bad file is one line before any port is opened
    logs.setup()
    Listener(config).serve()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.settings:
        from .operators.tace_planning import parse_settings

        parse_settings(args.settings)  # a bad value is one line before anything is generated
    return run_demo(args.out, size=args.size, settings=args.settings)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (the full usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _llm_arguments(parser: argparse.ArgumentParser, what_is_sent: str) -> None:
    """--allow-send, --llm-model and --llm-base-url of a command whose reader can be an LLM."""
    parser.add_argument(
        "--allow-send",
        action="store_true",
        help=f"opt in to sending {what_is_sent} (also $ONCOPLAN_LLM_ALLOW_SEND=1)",
    )
    parser.add_argument("--llm-model", help="openai: the model name; transformers: the model folder")
    parser.add_argument("--llm-base-url", help="openai: the endpoint's base URL, e.g. http://llm.hospital:8000/v1")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="oncoplan",
        description="OncoPlan: AI treatment planning on MONAI Bundle and MONAI Deploy. RESEARCH USE ONLY, "
        "not a medical device.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything the apps and their libraries log (Holoscan, the SDK, MONAI, warnings); "
        "by default one line per stage and a closing summary",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser(
        "synth",
        help="generate a synthetic DICOM cohort (breast RT or liver TACE)",
        description="Generate a synthetic cohort: DIR/cohort.csv and DIR/<case_id>/ with DICOM CT under dicom/ "
        "and ground truth under labels/ (NIfTI on the CT grid and DICOM-SEG). Every result on it is synthetic.",
    )
    synth.add_argument("kind", help="breast | liver")
    synth.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--cases", type=_positive_int, required=True, help="number of cases (>= 1)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives identical data")
    synth.add_argument("--site", default="internal", help="internal | external: two hospitals (class mix, scanner)")
    synth.add_argument(
        "--size", default="full", help="full (clinical grids, 0.6-1.0 mm) | small (coarse grid for tests)"
    )
    synth.add_argument(
        "--protocols",
        default="practice",
        help="liver: practice (physicians' regimens, the 'gold') | random (uniform over the conflict-free "
        "action space, for training the world models)",
    )
    synth.add_argument(
        "--generator",
        help="liver: the generator version, recorded in cohort.json: liver-1 (default: the images show nothing of "
        "the hidden response profile; the shipped TACE bundles are trained on it) | liver-2 (the pre-treatment "
        "scan shows vascularity and the anthracycline sensitivity, with noise; physicians from real practice) | "
        "liver-3 (as liver-2, with the visible biology deciding the best protocol)",
    )
    synth.add_argument(
        "--pacs",
        action="store_true",
        help="shape each planning study as a PACS sends it: a topogram, a 2x-thick reconstruction, a coronal "
        "reformat, a dose screen capture and a dose SR beside the planning series (for the apps and the demo)",
    )
    synth.add_argument(
        "--transfer-syntax",
        help="compress the planning study's CT images: jpeg-lossless-sv1 | jpeg-lossless | jpeg-ls | rle (dcmtk) | "
        "jpeg2000 (lossless, GDCM)",
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    evaluate = sub.add_parser(
        "evaluate",
        help="the papers' metrics on a cohort (ctv), as JSON and Markdown",
        description="ctv: Dice, IoU and HD95 (cm, physical spacing) with 1,000-sample bootstrap 95%% CIs per site, "
        "the vision-only baseline, counterfactual notes (laterality, N stage) and, with --efficiency, the models "
        "trained on 40/60/80%% of the data.",
    )
    evaluate.add_argument("kind", help="ctv, or tace (its own options: oncoplan evaluate tace --help)")
    evaluate.add_argument(
        "--bundle",
        type=Path,
        help="bundle folder (default: the shipped ctv_llmseg bundle)",
    )
    evaluate.add_argument("--internal", type=Path, help="held-out cohort from the training site")
    evaluate.add_argument("--external", type=Path, help="held-out cohort from another site")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for ctv_evaluation.json and .md")
    evaluate.add_argument("--efficiency", action="store_true", help="also evaluate models/efficiency/*.pt")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_evaluate)

    contour = sub.add_parser(
        "contour",
        help="CTV of a CT study from its clinical note: RTSTRUCT + DICOM-SEG (LLMSeg app)",
        description="Runs the CTV contouring app (MONAI Deploy graph) on one DICOM study. The note comes from "
        "--note, else clinical.json in or beside the input folder, else a text SR in the study.",
    )
    contour.add_argument("-i", "--input", type=Path, required=True, help="folder with the study's DICOM files")
    contour.add_argument("-o", "--output", type=Path, required=True, help="folder for the DICOM written")
    contour.add_argument("--note", help='clinical note, e.g. "N1, breast conserving surgery, left side"')
    contour.add_argument("-m", "--model", type=Path, help="CTV bundle folder (default: the shipped one)")
    contour.add_argument("--series", metavar="UID|NUMBER", help=SERIES_HELP)
    contour.add_argument(
        "--note-reader",
        choices=("rules", "openai", "transformers"),
        help="who reads the note: rules (default; offline; $ONCOPLAN_NOTE_READER), openai (an OpenAI-compatible "
        "endpoint, as `plan --policy openai`: $ONCOPLAN_LLM_BASE_URL, $ONCOPLAN_LLM_MODEL, key in $OPENAI_API_KEY; "
        "needs --allow-send) or transformers (a local chat model folder: --llm-model DIR); the model's answer is "
        "held to the rules' field checks, and on a timeout, error or invalid answer the rules read the note "
        "(ctv_note.json says which reader read it and why)",
    )
    _llm_arguments(
        contour,
        "the de-identified note (the study's names, IDs, UIDs and dates removed) to the openai note reader's endpoint",
    )
    contour.set_defaults(func=_contour)

    plan = sub.add_parser(
        "plan",
        help="TACE plan of a pre-treatment liver CT study: DICOM SR + SEG + PDF (MeWM world-model app)",
        description="Runs the TACE planning app (MONAI Deploy graph) on one pre-treatment liver CT study: picks the "
        "portal-venous (else arterial) series, segments the tumor, searches protocols with the world model and "
        "writes plan.json, a Comprehensive SR with the first 20 ranked protocols, a DICOM-SEG of the chosen protocol's "
        "simulated post-treatment tumor, and the PDF report (report.pdf and Encapsulated PDF).",
    )
    plan.add_argument("-i", "--input", type=Path, required=True, help="folder with the study's DICOM files")
    plan.add_argument("-o", "--output", type=Path, required=True, help="folder for the files written")
    plan.add_argument(
        "-m", "--model", type=Path, help="folder with tace_assistant, tace_dynamics, tace_survival (default: shipped)"
    )
    plan.add_argument(
        "--settings",
        help="search size: cpu (default) | paper (MeWM: B=5, T=5, 25 DDIM steps) | a JSON object of search "
        'fields over cpu, e.g. \'{"beam": 2, "samples": 1, "steps": 2, "action_set": "tcia"}\'; "search": auto '
        "(default: every valid protocol for the layout read-out with the offline policy, else the beam) | beam | "
        "best_of_n; with '{\"defer_alpha\": 0.05}' the plan defers to the policy's protocol when the world model "
        "does not separate its top protocols (ANOVA p >= 0.05)",
    )
    plan.add_argument("--series", metavar="UID|NUMBER", help=SERIES_HELP)
    plan.add_argument(
        "--clinical",
        metavar="FILE",
        help="the patient's clinical data, a JSON object (fields and units: oncoplan/tace/patient.py); else "
        "$ONCOPLAN_CLINICAL (a path or the JSON), clinical.json in or beside the input folder, an SR in the study; "
        "covariates not given take the training median and the outputs say which",
    )
    plan.add_argument(
        "--policy",
        choices=("offline", "openai", "transformers"),
        help="who proposes the candidate protocols: offline (default; $ONCOPLAN_POLICY), openai (an "
        "OpenAI-compatible endpoint: $ONCOPLAN_LLM_BASE_URL, $ONCOPLAN_LLM_MODEL, key in $OPENAI_API_KEY; needs "
        "--allow-send) or transformers (a local chat model folder: --llm-model DIR); on a timeout, error or "
        "an answer outside the action base the offline policy plans, and plan.json says why",
    )
    _llm_arguments(plan, "the de-identified case (clinical fields, one CT slice) to the openai policy's endpoint")
    plan.set_defaults(func=_plan)

    package = sub.add_parser(
        "package",
        help="a MONAI Application Package (MAP) image of an app (or the listener image), built offline",
        description="Gathers every wheel the app needs into a wheelhouse on this host (once; cached in "
        "~/.cache/oncoplan or $ONCOPLAN_CACHE), writes the build context (Dockerfile, app.json and pkg.json "
        "per the MAP specification, the app, its bundles, the oncoplan wheel, runtime/ with the wheelhouse, "
        "build.sh) into --out, and builds it with podman or docker when one answers ($ONCOPLAN_ENGINE picks): "
        "a Debian base made with mmdebstrap (or --base), the shared runtime installed with pip --no-index, "
        "then the image. Only the base (Debian's mirror) and the wheelhouse (pip's indexes) are fetched, once; "
        "the image builds run with no network.",
    )
    package.add_argument("app", choices=["ctv", "tace", "listener"], help="ctv | tace | listener")
    package.add_argument("--out", type=Path, required=True, help="folder for the build context (new or empty)")
    package.add_argument("--tag", help="image tag (default oncoplan-<app>:latest)")
    package.add_argument("--no-build", action="store_true", help="only write the context (build it with build.sh)")
    package.add_argument(
        "--base",
        metavar="IMAGE",
        help="base image with Python 3.11 (default: oncoplan-base:bookworm, made "
        "from Debian's packages with mmdebstrap when the engine lacks it)",
    )
    package.add_argument(
        "--wheelhouse", type=Path, metavar="DIR", help="a folder of wheels brought along (no network needed)"
    )
    package.add_argument("--gpu", action="store_true", help="the CUDA build of torch and TensorRT (default: CPU)")
    package.set_defaults(func=_package)

    listen = sub.add_parser(
        "listen",
        help="the PACS-facing DICOM listener: receive studies, run the apps, send the results back",
        description="Storage SCP (C-ECHO, C-STORE; calling-AE allow-list; optional TLS) with a durable spool. A study "
        "is complete after a quiet period; routing rules pick the app(s); jobs live in a persistent SQLite queue "
        "with retries and resume after a restart; results go to the destination by C-STORE until acknowledged. "
        "See deploy/README.md for the configuration file.",
    )
    listen.add_argument("--config", type=Path, required=True, help="listener configuration (YAML or JSON)")
    listen.set_defaults(func=_listen)

    demo = sub.add_parser(
        "demo",
        help="run the main job on an embedded default (synthetic studies of both workflows)",
        description="Generate one synthetic breast RT study and one liver TACE study, run the CTV contouring app on "
        "the first and the TACE planning app on the second, and list the DICOM written.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--size", default="full", help="full | small")
    demo.add_argument("--settings", help="TACE search settings: cpu (default) | paper | JSON (see plan --help)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # this process is `oncoplan ...` (not a test or the warm worker calling in)
        from .runtime.stack import ensure_holoscan_stack

        ensure_holoscan_stack()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["evaluate", "tace"]:  # the planner evaluation owns its options
        from .training.planner.evaluate import main as evaluate_tace

        return evaluate_tace(argv[2:], prog="oncoplan evaluate tace")
    parser = build_parser()
    args = parser.parse_args(argv)
    from .apps import console

    console.configure(args.verbose)
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"oncoplan: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, ... while writing
        print(f"oncoplan: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("oncoplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

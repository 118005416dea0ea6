"""`monai-deploy exec APP -i IN -o OUT -m MODELS`: the card's command, run the SDK's way.

The SDK dropped `monai-deploy exec` in 0.6 (apps run as `python -m <app>`); this entry point
keeps the card's command working for OncoPlan's apps and adds nothing else. APP is an app
name (ctv_contouring, tace_planner), its module (oncoplan.apps.ctv_contouring) or its folder (apps/ctv_contouring).
HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH stand in for -i/-o/-m.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

APPS = {
    "ctv_contouring": ("oncoplan.apps.ctv_contouring.app", "CTVContouringApp"),
    "tace_planner": ("oncoplan.apps.tace_planner.app", "TacePlannerApp"),
}
USAGE = (
    "usage: monai-deploy exec APP [-i IN] [-o OUT] [-m MODELS] [--note TEXT (ctv_contouring)] "
    "[--settings cpu|paper (tace_planner)]   (APP: " + ", ".join(APPS) + ")"
)


def _app_class(name: str):
    key = Path(name.rstrip("/")).name.removeprefix("oncoplan.apps.")
    if key not in APPS:
        return None
    module, cls = APPS[key]
    return getattr(importlib.import_module(module), cls)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # this process is `monai-deploy ...`
        from oncoplan.runtime.stack import ensure_holoscan_stack

        ensure_holoscan_stack()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]) or args[:2] in (["exec", "-h"], ["exec", "--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if len(args) < 2 or args[0] != "exec":
        print(USAGE, file=sys.stderr)
        return 2
    app_cls = _app_class(args[1])
    if app_cls is None:
        print(f"monai-deploy: error: unknown app {args[1]!r}; {USAGE}", file=sys.stderr)
        return 2
    from oncoplan.apps.runner import main as run

    return run(app_cls, [f"monai-deploy exec {args[1]}", *args[2:]])


if __name__ == "__main__":
    sys.exit(main())

from oncoplan.apps.runner import main

from .app import TacePlannerApp

raise SystemExit(main(TacePlannerApp))

from oncoplan.apps.runner import exit_now, main

from .app import TacePlannerApp

exit_now(main(TacePlannerApp))

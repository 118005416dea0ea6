from oncoplan.apps.runner import exit_now, main
from oncoplan.apps.tace_planner.app import TacePlannerApp

exit_now(main(TacePlannerApp))

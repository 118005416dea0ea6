from oncoplan.runtime.stack import ensure_holoscan_stack

ensure_holoscan_stack()  # before Holoscan is imported: its threads take the stack it asks for

from oncoplan.apps.runner import exit_now, main  # noqa: E402
from oncoplan.apps.tace_planner.app import TacePlannerApp  # noqa: E402

exit_now(main(TacePlannerApp))

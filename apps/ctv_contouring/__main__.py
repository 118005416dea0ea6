from oncoplan.runtime.stack import ensure_holoscan_stack

ensure_holoscan_stack()  # before Holoscan is imported: its threads take the stack it asks for

from oncoplan.apps.ctv_contouring.app import CTVContouringApp  # noqa: E402
from oncoplan.apps.runner import exit_now, main  # noqa: E402

exit_now(main(CTVContouringApp))

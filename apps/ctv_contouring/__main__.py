from oncoplan.apps.ctv_contouring.app import CTVContouringApp
from oncoplan.apps.runner import exit_now, main

exit_now(main(CTVContouringApp))

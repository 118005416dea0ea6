from oncoplan.apps.runner import exit_now, main

from .app import CTVContouringApp

exit_now(main(CTVContouringApp))

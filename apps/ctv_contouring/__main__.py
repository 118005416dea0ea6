from oncoplan.apps.runner import main

from .app import CTVContouringApp

raise SystemExit(main(CTVContouringApp))

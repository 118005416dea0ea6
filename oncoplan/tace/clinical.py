"""Clinical covariates of a TACE patient as the models read them."""

CHILD_PUGH = {"A": 0, "B": 1, "C": 2}  # Child-Pugh class as an ordinal

"""Clinical covariates of a TACE patient as the models read them."""

CHILD_PUGH = {"A": 0, "B": 1, "C": 2}  # Child-Pugh class as an ordinal
# HCC-TACE-Seg records OS in weeks; months = weeks / 4.345, which reproduces the seed's Table 4 to one decimal.
WEEKS_PER_MONTH = 4.345

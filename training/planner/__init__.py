"""The TACE planner's evaluation and studies (the planner itself is :mod:`oncoplan.planner`): planning
evaluation against gold and oracle protocols, pooled reports, stage ranking, item effects, and fitting
the response Cox model."""

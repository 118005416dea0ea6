"""Training and evaluation of the LLMSeg CTV model (the network, text encoder, notes and predictor the app
runs are in :mod:`oncoplan.ctv`): data pipelines and the papers' metrics."""

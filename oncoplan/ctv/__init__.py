"""The CTV contouring core (LLMSeg): the text-aligned network, its text encoder, the clinical-note
reader and the predictor the app runs."""

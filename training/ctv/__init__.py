"""Text-guided CTV contouring (LLMSeg): text encoder, network, data, notes and evaluation."""

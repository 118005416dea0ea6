"""The CTV contouring app (LLMSeg) as a MONAI Deploy application."""

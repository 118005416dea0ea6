"""The TACE planning app (MeWM world-model search) as a MONAI Deploy application."""

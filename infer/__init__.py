"""Timbre inference: everything needed to convert a voice (never imports train/ or gradio)."""

__version__ = "0.1.0"

"""``seg ui``: a Gradio app for side-by-side comparisons (optional extra ``[ui]``)."""

from .app import build_app, launch

__all__ = ["build_app", "launch"]

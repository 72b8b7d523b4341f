"""The ``seg`` command-line tool."""

import os

# transformers warns about optional image backends that SEG never uses; keep the terminal readable
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .main import main  # noqa: E402

__all__ = ["main"]

"""One logging helper: every fedcore module logs through ``get_logger``."""
from __future__ import annotations

import logging
import os

_ROOT = "fedcore"
_configured = False


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``fedcore`` namespace; level from FEDCORE_LOG_LEVEL (default INFO)."""
    global _configured
    if not _configured:
        root = logging.getLogger(_ROOT)
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
        root.setLevel(os.environ.get("FEDCORE_LOG_LEVEL", "INFO").upper())
        _configured = True
    short = name.removeprefix(f"{_ROOT}.")
    return logging.getLogger(f"{_ROOT}.{short}")

"""`quiet_loggers`: hold the libraries we drive (torch.export, torch.onnx, ONNX Runtime's
quantizer) to errors while they run. Their warnings are about their own internals or advice for
other workflows; gcc-gan reports what matters to the user itself."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_loggers(*prefixes: str):
    """Loggers named with one of `prefixes` (and the loggers named exactly so, even if not yet
    created) log only errors inside the block; "" is the root logger."""
    names = {n for n in list(logging.root.manager.loggerDict)
             if any(p and n.startswith(p) for p in prefixes)}
    loggers = [logging.getLogger(n) for n in names | set(prefixes)]  # getLogger("") is root
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

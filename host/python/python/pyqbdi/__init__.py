"""PyQBDI's API (0.12) on the qbdi-rs engine: dynamic binary instrumentation of x86-64
Linux code from Python. Scripts written for PyQBDI run unchanged; see the package's
README and `pyqbdi/__init__.pyi` for the API."""

from ._pyqbdi import *  # noqa: F401,F403
from ._pyqbdi import (  # noqa: F401
    __version__,
    __engine_version__,
    __arch__,
    __platform__,
    __preload__,
)

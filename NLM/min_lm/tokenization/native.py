"""Optional compiled cores for the tokenizer's hot loops, and the one switch that turns them off.

The pure-Python code is the reference: every compiled function has a Python twin that computes the same
result, and the tests run both. A core is an optional C extension (built by `pip install -e .` where a C
compiler exists); when it is missing, or when the environment variable MINLM_PURE_PYTHON=1 is set, or
when a caller passes `native=False`, the Python path runs instead.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "MINLM_PURE_PYTHON"


def native_module(name: str, native: bool | None = None) -> ModuleType | None:
    """The compiled module `NLM.min_lm.tokenization.<name>`, or None where Python should run instead.

    native=None follows the environment (on unless MINLM_PURE_PYTHON=1); False forces Python;
    True asks for the core and raises ImportError if it was not built.
    """
    if native is False or (native is None and os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")):
        return None
    try:
        return importlib.import_module(f"NLM.min_lm.tokenization.{name}")
    except ImportError:
        if native:
            raise
        return None

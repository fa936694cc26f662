"""Build the optional C cores; everything else about the package is in pyproject.toml.

Each core is an `optional` extension: where no C compiler works, `pip install` warns and goes on,
and the package runs its pure-Python reference instead (see NLM/min_lm/tokenization/native.py).
"""

from setuptools import Extension, setup

EXTENSIONS = [
    Extension(
        "NLM.min_lm.tokenization._encode_core",
        ["NLM/min_lm/tokenization/_encode_core.c"],
        optional=True,
    ),
]

setup(ext_modules=EXTENSIONS)

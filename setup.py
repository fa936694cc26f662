"""Build the optional C cores of the tokenizer; `pip install -e .` runs this (metadata: pyproject.toml).

Each core is an optional extension: where no C compiler exists the build skips it and the
pure-Python code runs instead (see NLM/min_lm/tokenization/native.py).
"""

from setuptools import Extension, setup

EXTENSIONS = [
    Extension(
        "NLM.min_lm.tokenization._train_core", ["NLM/min_lm/tokenization/_train_core.c"], optional=True
    ),
    Extension(
        "NLM.min_lm.tokenization._encode_core", ["NLM/min_lm/tokenization/_encode_core.c"], optional=True
    ),
]

setup(ext_modules=EXTENSIONS)

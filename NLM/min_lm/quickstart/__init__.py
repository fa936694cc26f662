"""The whole pipeline in one call: corpus -> tokenizer -> token ids -> model -> samples (`minlm quickstart`).

config.py    the run's sizes and options (also the `minlm quickstart` command line; imports no torch)
pipeline.py  the five stages, each a call of the library function behind one of the other commands
"""

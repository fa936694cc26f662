"""Namespace package holding min_lm (kept for the documented `python -m NLM.min_lm.scripts.X` commands)."""

"""min_lm: raw text -> byte-level BPE tokenizer -> GPT-style language model -> generated text."""

__version__ = "0.1.0"

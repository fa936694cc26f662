"""Byte-level BPE: `train_bpe` learns merges from a text file, `BPETokenizer` encodes and decodes."""

from NLM.min_lm.tokenization.bpe import BPETokenizer, train_bpe
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT, load_tokenizer

__all__ = ["END_OF_TEXT", "BPETokenizer", "load_tokenizer", "train_bpe"]

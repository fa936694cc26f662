"""Byte-level BPE: `train_bpe` learns merges from a text file, `BPETokenizer` encodes and decodes."""

from NLM.min_lm.tokenization.bpe import BPETokenizer, train_bpe

__all__ = ["BPETokenizer", "train_bpe"]

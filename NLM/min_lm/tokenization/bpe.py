"""Byte-level BPE with GPT-2 pre-tokenization: the public entry points.

Training lives in `bpe_trainer.py` (parallel pre-token counting, incremental merge loop) and the
tokenizer in `tokenizer.py` (cached encoding, streaming, GPT-2 file format); this module is the
stable import path named in the API reference (docs/api.md).
"""

from NLM.min_lm.tokenization.bpe_trainer import train_bpe
from NLM.min_lm.tokenization.tokenizer import BPETokenizer

__all__ = ["BPETokenizer", "train_bpe"]

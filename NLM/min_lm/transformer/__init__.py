"""The language model and everything needed to train it, written from torch primitives.

modules.py     Linear, Embedding, RMSNorm, SwiGLU, silu, softmax
attention.py   RoPE, scaled dot-product attention, causal multi-head self-attention
kv_cache.py    key/value cache for incremental decoding
model.py       TransformerBlock, TransformerLM, ModelConfig
optim.py       AdamW, parameter groups
utils.py       cross_entropy, LR schedule, gradient clipping, get_batch
checkpoint.py  save_checkpoint, load_checkpoint, load_model
sampling.py    generate (greedy / temperature / top-k / top-p decoding with the KV cache)
"""

from NLM.min_lm.transformer.attention import (
    MultiHeadSelfAttention,
    RotaryPositionalEmbedding,
    scaled_dot_product_attention,
)
from NLM.min_lm.transformer.checkpoint import load_checkpoint, load_model, save_checkpoint
from NLM.min_lm.transformer.kv_cache import KVCache
from NLM.min_lm.transformer.model import ModelConfig, TransformerBlock, TransformerLM
from NLM.min_lm.transformer.modules import Embedding, Linear, RMSNorm, SwiGLU, silu, softmax
from NLM.min_lm.transformer.optim import AdamW, param_groups
from NLM.min_lm.transformer.sampling import generate
from NLM.min_lm.transformer.utils import cross_entropy, get_batch, get_lr_cosine_schedule, gradient_clipping

__all__ = [
    "AdamW",
    "Embedding",
    "KVCache",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryPositionalEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "cross_entropy",
    "generate",
    "get_batch",
    "get_lr_cosine_schedule",
    "gradient_clipping",
    "load_checkpoint",
    "load_model",
    "param_groups",
    "save_checkpoint",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
]

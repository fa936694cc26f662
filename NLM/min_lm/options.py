"""Names a user chooses from, defined once for the flags and for the code that acts on them.

They live here, apart from that code, because the command lines must answer `--help` and flag errors
without importing torch.
"""

# How attention is computed: PyTorch's fused kernel, or the readable reference written from primitives.
ATTN_IMPLS = ("sdpa", "reference")
# Weight dtypes by name (`getattr(torch, name)` is the dtype), e.g. for `minlm export-hf --dtype`.
DTYPES = ("float32", "bfloat16", "float16")
# Compute dtypes of training: float16 would also need loss scaling, which the trainer does not do.
TRAIN_DTYPES = ("float32", "bfloat16")

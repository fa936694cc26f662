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
# The optimizer of `minlm train`: AdamW for every weight, or Muon for the hidden matrices beside AdamW.
OPTIMIZERS = ("adamw", "muon")
# Learning-rate schedules (`transformer.utils.lr_at`): warmup + cosine, or warmup-stable-decay.
LR_SCHEDULES = ("cosine", "wsd")
# Presets of `minlm train` (training/config.py RECIPES): the seed's recipe, or the modern speedrun one.
RECIPE_NAMES = ("baseline", "speedrun")

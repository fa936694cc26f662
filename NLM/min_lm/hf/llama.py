"""Our TransformerLM is a Llama: the config fields and weight names that correspond, and RoPE's layout.

Both models are pre-norm decoders with RMSNorm, rotary position embeddings, a SwiGLU feed-forward, no
biases and an untied output head, so conversion is a renaming of weights, with one real change. RoPE
rotates pairs of query/key dimensions; we pair adjacent dimensions (2i, 2i+1) as in the RoFormer paper,
while Hugging Face's Llama pairs dimension i with i + head_dim/2 ("rotate_half"). Reordering the rows of
q_proj and k_proj within each head (even rows first, then odd rows) turns one layout into the other. Since
attention only uses the dot products q·k, and both are reordered alike, the model computes the same function.
"""

from __future__ import annotations

from typing import Any

import torch

from NLM.min_lm.errors import UserError
from NLM.min_lm.transformer import ModelConfig

# Our name -> Hugging Face's, for the weights of layer i (prefixed "layers.{i}." and "model.layers.{i}.").
LAYER_WEIGHTS = {
    "ln1.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
OTHER_WEIGHTS = {
    "token_embeddings.weight": "model.embed_tokens.weight",
    "ln_final.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
ROTATED = ("attn.q_proj.weight", "attn.k_proj.weight")
# Our ModelConfig field -> the Llama config.json field that means the same; used in both directions.
# (RoPE's base has two spellings in config.json and is handled by `_rope_theta`.)
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "context_length": "max_position_embeddings",
    "d_model": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "d_ff": "intermediate_size",
    "norm_eps": "rms_norm_eps",
}
RMS_NORM_EPS_DEFAULT = 1e-6  # transformers' LlamaConfig default, for a config.json that leaves it out


def weight_names(num_layers: int) -> dict[str, str]:
    """Every weight of a model with `num_layers` layers: our name -> Hugging Face's."""
    names = dict(OTHER_WEIGHTS)
    for i in range(num_layers):
        for ours, theirs in LAYER_WEIGHTS.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def adjacent_to_half_split(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from our RoPE pairing (2i, 2i+1) to Llama's (i, i + head_dim/2).

    Within each head, the rows of a pair become row i of the first half and row i of the second half.
    """
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    per_head = weight.reshape(num_heads, head_dim // 2, 2, in_features)
    return per_head.transpose(1, 2).reshape(out_features, in_features).contiguous()


def half_split_to_adjacent(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of `adjacent_to_half_split`."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    per_head = weight.reshape(num_heads, 2, head_dim // 2, in_features)
    return per_head.transpose(1, 2).reshape(out_features, in_features).contiguous()


def to_llama_weights(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict as Hugging Face LlamaForCausalLM's (renamed, q/k rows reordered for RoPE)."""
    names = weight_names(config.num_layers)
    missing = sorted(set(names) - set(state_dict))
    if missing:
        raise UserError(f"the checkpoint's model lacks weights {', '.join(missing[:3])}")
    hf: dict[str, torch.Tensor] = {}
    for ours, theirs in names.items():
        tensor = state_dict[ours]
        if ours.endswith(ROTATED):
            tensor = adjacent_to_half_split(tensor, config.num_heads)
        hf[theirs] = tensor.contiguous()
    return hf


def from_llama_weights(
    tensors: dict[str, torch.Tensor], config: ModelConfig, tied: bool, source: str
) -> dict[str, torch.Tensor]:
    """Hugging Face Llama weights as our state dict; a tied output head becomes a copy of the embeddings."""
    tensors = dict(tensors)
    if tied and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    names = weight_names(config.num_layers)
    missing = sorted(set(names.values()) - set(tensors))
    if missing:
        raise UserError(f"{source}: missing weights {', '.join(missing[:3])}")
    # Old transformers versions stored RoPE's frequencies; they follow from the config.
    unknown = sorted(n for n in set(tensors) - set(names.values()) if not n.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise UserError(f"{source}: weights that min_lm's Llama does not have: {', '.join(unknown[:3])}")
    ours: dict[str, torch.Tensor] = {}
    for our_name, their_name in names.items():
        tensor = tensors[their_name]
        if our_name.endswith(ROTATED):
            tensor = half_split_to_adjacent(tensor, config.num_heads)
        ours[our_name] = tensor.clone()
    return ours


def to_llama_config(
    config: ModelConfig, bos_token_id: int | None, eos_token_id: int | None, dtype: torch.dtype
) -> dict[str, Any]:
    """The `config.json` of the equivalent LlamaForCausalLM.

    RoPE's base is written both as `rope_theta` (transformers 4.x) and `rope_parameters` (5.x).
    """
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **{theirs: getattr(config, ours) for ours, theirs in CONFIG_FIELDS.items()},
        "num_key_value_heads": config.num_heads,
        "head_dim": config.d_model // config.num_heads,
        "hidden_act": "silu",
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def _rope_theta(hf: dict[str, Any], source: str) -> float:
    """RoPE's base from either config generation, refusing any scaling (ours has none)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if rope_type not in (None, "default"):
        raise UserError(f"{source}: rope scaling {rope_type!r} does not fit (min_lm's RoPE has no scaling)")
    if scaling and not rope_type:
        raise UserError(f"{source}: rope_scaling {scaling!r} does not fit (min_lm's RoPE has no scaling)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def from_llama_config(hf: dict[str, Any], source: str) -> tuple[ModelConfig, bool]:
    """Our ModelConfig for a Hugging Face Llama `config.json` (and whether its embeddings are tied).

    Raises UserError naming the first field that our architecture cannot represent.
    """
    if hf.get("model_type") != "llama":
        model_type = hf.get("model_type")
        raise UserError(f"{source}: model_type is {model_type!r}; only 'llama' models can be imported")

    def expect(field: str, wanted: Any, default: Any) -> None:
        value = hf.get(field)
        value = default if value is None else value
        if value != wanted:
            raise UserError(f"{source}: {field} is {value!r}; min_lm needs {wanted!r}")

    hf = {"rms_norm_eps": RMS_NORM_EPS_DEFAULT, **hf}
    missing = [theirs for theirs in CONFIG_FIELDS.values() if theirs not in hf]
    if missing:
        raise UserError(f"{source}: missing field {missing[0]!r}")
    # every field is an int but the norm's epsilon
    values = {ours: (float if ours == "norm_eps" else int)(hf[theirs])
              for ours, theirs in CONFIG_FIELDS.items()}
    config = ModelConfig(**values, rope_theta=_rope_theta(hf, source))
    heads, d_model = config.num_heads, config.d_model
    expect("num_key_value_heads", heads, heads)  # grouped-query attention does not fit
    expect("head_dim", d_model // heads, d_model // heads)
    expect("hidden_act", "silu", "silu")
    expect("attention_bias", False, False)
    expect("mlp_bias", False, False)
    expect("pretraining_tp", 1, 1)
    return config, bool(hf.get("tie_word_embeddings", False))

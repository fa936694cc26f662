"""Write a min_lm checkpoint + tokenizer as a Hugging Face model directory, and read one back.

`export_hf` produces what `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load without a network: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and special_tokens_map.json. The directory is built under a temporary name beside
the target and renamed into place, so it is either complete or absent.

`import_hf` reads a Llama-shaped directory (safetensors weights, one file or sharded) into a min_lm
checkpoint that `load_model` (and so every min_lm command) reads; with `vocab_path`/`merges_path` it also
writes the tokenizer, when tokenizer.json is a GPT-2-style byte-level BPE.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from NLM.min_lm.errors import UserError
from NLM.min_lm.hf.llama import from_llama_config, from_llama_weights, to_llama_config, to_llama_weights
from NLM.min_lm.hf.tokenizer_json import byte_level_bpe_from_tokenizer_json, tokenizer_json
from NLM.min_lm.options import DTYPES
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer, load_tokenizer
from NLM.min_lm.transformer import ModelConfig, TransformerLM, save_checkpoint
from NLM.min_lm.transformer.checkpoint import read_model_checkpoint


def _safetensors():
    """The safetensors module; it is optional for min_lm, so its absence is a user-fixable error."""
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("Hugging Face export/import needs safetensors: pip install safetensors") from None
    return safetensors.torch


def _model_with_weights(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> TransformerLM:
    """A TransformerLM whose parameters *are* the tensors of `state`, after checking names and shapes.

    The model is built on the "meta" device (shapes only, no memory, no random initialisation, which
    would take longer than the whole conversion) and the tensors are assigned into it, not copied.
    """
    model = TransformerLM.from_config(config, device="meta")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source}: weights do not match the model config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(f"{source}: weight {name} has shape {tuple(tensor.shape)}, but the model config "
                            f"implies {tuple(expected[name].shape)}")
    model.load_state_dict(state, assign=True)
    return model


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _read_min_lm_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and weights of a min_lm checkpoint, checked against each other."""
    config, state, _ = read_model_checkpoint(path)
    _model_with_weights(config, state, f"checkpoint {path}")
    return config, state


def _special_token_ids(tokenizer: BPETokenizer, special_tokens: list[str]) -> dict[str, int]:
    """Each special token's id, as our tokenizer assigns it (a special token always encodes to one id)."""
    return {token: tokenizer.encode(token)[0] for token in special_tokens}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_files(
    out: Path, tokenizer: BPETokenizer, specials: dict[str, int], context_length: int
) -> None:
    """tokenizer.json plus the two small files transformers reads to name the special tokens."""
    _write_json(out / "tokenizer.json", tokenizer_json(tokenizer.vocab, tokenizer.merges, specials))
    names = list(specials)
    roles: dict[str, Any] = {}
    if names:
        roles = {"bos_token": names[0], "eos_token": names[0], "unk_token": None}
    _write_json(
        out / "tokenizer_config.json",
        {
            # The generic fast tokenizer runs tokenizer.json as written; a Llama-specific class would
            # rebuild the pipeline (SentencePiece-style) and add a BOS token.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context_length,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **roles,
            "added_tokens_decoder": {
                str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
                for s, i in specials.items()
            },
        },
    )
    special_tokens_map = {**roles, "additional_special_tokens": names[1:]} if names else {}
    _write_json(out / "special_tokens_map.json", special_tokens_map)


def _check_empty_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; pass --force to replace it")


def _move_into_place(built: Path, out: Path) -> None:
    """Rename the finished directory `built` to `out`, replacing what was there only at the last moment."""
    if out.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(built, out)
        shutil.rmtree(old)
    else:
        os.replace(built, out)


def export_hf(
    checkpoint: str | os.PathLike,
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    out: str | os.PathLike,
    special_tokens: list[str] | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Write checkpoint + tokenizer as a Hugging Face Llama directory `out`; returns its path.

    The first special token (default `<|endoftext|>`) becomes BOS, EOS and the padding token for generation.
    `dtype` (float32 / bfloat16 / float16) converts the weights; by default they keep the checkpoint's dtype.
    """
    out = Path(out)
    _check_empty_target(out, force)
    special_tokens = [END_OF_TEXT] if special_tokens is None else list(special_tokens)
    save_file = _safetensors().save_file

    config, state = _read_min_lm_checkpoint(checkpoint)
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        state = {name: tensor.to(getattr(torch, dtype)) for name, tensor in state.items()}
    tokenizer = load_tokenizer(vocab_path, merges_path, special_tokens)
    # A model may have more embeddings than the tokenizer has tokens (a padded vocab), never fewer.
    largest_id = max(tokenizer.vocab)
    if largest_id >= config.vocab_size:
        raise UserError(
            f"the tokenizer ({vocab_path}) has ids up to {largest_id}, but the model in {checkpoint} has "
            f"only vocab_size={config.vocab_size}: they do not belong together"
        )
    specials = _special_token_ids(tokenizer, special_tokens)
    eos = next(iter(specials.values()), None)
    weights = to_llama_weights(state, config)
    weight_dtype = next(iter(weights.values())).dtype

    out.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, unique name beside the target (same file system, so the final rename is atomic). Not
    # mkdtemp: its directories are private (0700), and the result should get the usual permissions.
    built = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    built.mkdir()
    try:
        _write_json(built / "config.json", to_llama_config(config, eos, eos, weight_dtype))
        _write_json(
            built / "generation_config.json",
            {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos},
        )
        save_file(weights, built / "model.safetensors", metadata={"format": "pt"})
        shutil.copymode(built / "config.json", built / "model.safetensors")  # not private either
        _tokenizer_files(built, tokenizer, specials, config.context_length)
        _move_into_place(built, out)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; is {path.parent} a Hugging Face model directory?") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc


def _read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors model, single-file or sharded (model.safetensors.index.json)."""
    load_file = _safetensors().load_file
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            tensors.update(load_file(hf_dir / shard))
        return tensors
    raise UserError(f"{hf_dir} holds no model.safetensors (other weight formats are not supported)")


def _import_tokenizer(hf_dir: Path, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> None:
    source = hf_dir / "tokenizer.json"
    converted = byte_level_bpe_from_tokenizer_json(_read_json(source), str(source))
    if isinstance(converted, str):
        raise UserError(f"{source} cannot be imported: {converted}")
    vocab, merges, specials = converted
    try:
        tokenizer = BPETokenizer(vocab, merges, specials)
    except ValueError as e:  # e.g. a vocab without all 256 single bytes
        raise UserError(f"{source} cannot be imported: {e}") from None
    tokenizer.save(vocab_path, merges_path)


def import_hf(
    hf_dir: str | os.PathLike,
    out: str | os.PathLike,
    vocab_path: str | os.PathLike | None = None,
    merges_path: str | os.PathLike | None = None,
) -> Path:
    """Read a Llama-shaped Hugging Face directory into a min_lm checkpoint `out` (iteration 0, no optimizer).

    Weights keep their stored dtype, so exporting and importing again gives back identical tensors.
    """
    hf_dir = Path(hf_dir)
    if (vocab_path is None) != (merges_path is None):
        raise UserError("give both --vocab_path and --merges_path to import the tokenizer, or neither")
    config_path = hf_dir / "config.json"
    config, tied = from_llama_config(_read_json(config_path), str(config_path))
    state = from_llama_weights(_read_weights(hf_dir), config, tied, str(hf_dir))

    model = _model_with_weights(config, state, str(hf_dir))
    if vocab_path is not None:
        _import_tokenizer(hf_dir, vocab_path, merges_path)
    save_checkpoint(model, None, 0, out, imported_from=str(hf_dir))
    return Path(out)

"""Write a min_lm checkpoint + tokenizer as a Hugging Face model directory, and read one back.

`export_hf` produces what `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load without a network: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and special_tokens_map.json. The directory is built under a temporary name beside
the target and renamed into place, so it is either complete or absent.

`import_hf` reads a Llama- or Qwen3-shaped directory (safetensors weights, one file or sharded) into a min_lm
checkpoint that `load_model` (and so every min_lm command) reads; with `vocab_path`/`merges_path` it also
writes the tokenizer, when tokenizer.json is a GPT-2-style byte-level BPE.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import (
    check_output_dir,
    check_output_file,
    describe_os_error,
    make_dirs,
    remove_stale_temps,
    temp_path,
)
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


# What export_hf writes; a directory holding only these (config.json among them) is a previous export.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")


def _check_target(out: Path, inputs: list[Path], force: bool) -> None:
    """`out` may be replaced only if it is empty, or (with force) a previous export; never if it holds an
    input: replacing it would delete the very checkpoint or tokenizer being exported."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    target = out.resolve()
    for source in inputs:
        if source.resolve() == target or target in source.resolve().parents:
            raise UserError(f"--out {out} holds the input {source}; write the export to another directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not force:
        raise UserError(f"--out {out} exists and is not empty; pass --force to replace an earlier export")
    foreign = [name for name in entries if name not in EXPORT_FILES]
    if foreign or "config.json" not in entries:
        example = foreign[0] if foreign else "no config.json"
        raise UserError(f"--out {out} does not look like an earlier export ({example}); --force replaces "
                        "only a directory written by export, so choose another --out or empty it yourself")


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
    """Write checkpoint + tokenizer as a Hugging Face Llama directory `out` (Qwen3 for a qk_norm model).

    The first special token (default `<|endoftext|>`) becomes BOS, EOS and the padding token for generation.
    `dtype` (float32 / bfloat16 / float16) converts the weights; by default they keep the checkpoint's dtype.
    """
    out = Path(out)
    _check_target(out, [Path(checkpoint), Path(vocab_path), Path(merges_path)], force)
    check_output_dir(out.resolve().parent, "--out")
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

    # resolved: `--out .` has no name of its own
    target = make_dirs(out.resolve().parent, "--out") / out.resolve().name
    # A hidden, unique name beside the target (same file system, so the final rename is atomic). Not
    # mkdtemp: its directories are private (0700), and the result should get the usual permissions.
    remove_stale_temps(target)
    built = temp_path(target)
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
        _move_into_place(built, target)
    except OSError as e:
        shutil.rmtree(built, ignore_errors=True)
        raise UserError(describe_os_error(out, e)) from None
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
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except OSError as e:
        raise UserError(describe_os_error(path, e, "read")) from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc


def _read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors model, single-file or sharded (model.safetensors.index.json)."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in _shard_names(_read_json(index), index):
            tensors.update(_load_safetensors(hf_dir / shard))
        return tensors
    raise UserError(f"{hf_dir} holds no model.safetensors (other weight formats are not supported)")


def _shard_names(doc: dict[str, Any], index: Path) -> list[str]:
    """The shard files an index names: plain relative names inside the model directory, which exist.

    A name that is absolute or climbs out with `..` is refused: a downloaded index must not make us
    read an arbitrary file. (Symbolic links inside the directory are followed, as the Hugging Face
    cache links its snapshots to shared blobs.)
    """
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: 'weight_map' must map weight names to shard files")
    shards = set()
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise UserError(f"{index}: weight {name!r} maps to {shard!r}, not a file name")
        parts = PurePosixPath(shard).parts
        if PurePosixPath(shard).is_absolute() or ".." in parts or "\\" in shard or ":" in shard:
            raise UserError(f"{index}: shard {shard!r} lies outside the model directory; refusing to read it")
        if not (index.parent / shard).is_file():
            raise UserError(f"{index}: shard {shard!r} (of weight {name!r}) is missing from {index.parent}")
        shards.add(shard)
    return sorted(shards)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; a truncated or foreign file is a UserError naming it."""
    load_file = _safetensors().load_file
    try:
        return load_file(path)
    except OSError as e:
        raise UserError(describe_os_error(path, e, "read")) from None
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for damaged files
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable safetensors file ({first_line})") from None


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
    check_output_file(out, "--out")
    for path, flag in ((vocab_path, "--vocab_path"), (merges_path, "--merges_path")):
        if path is not None:
            check_output_file(path, flag)
    config_path = hf_dir / "config.json"
    config, tied = from_llama_config(_read_json(config_path), str(config_path))
    state = from_llama_weights(_read_weights(hf_dir), config, tied, str(hf_dir))

    model = _model_with_weights(config, state, str(hf_dir))
    if vocab_path is not None:
        _import_tokenizer(hf_dir, vocab_path, merges_path)
    save_checkpoint(model, None, 0, out, imported_from=str(hf_dir))
    return Path(out)

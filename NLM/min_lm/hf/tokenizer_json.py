"""Our byte-level BPE tokenizer as a Hugging Face `tokenizer.json`, and back.

A `tokenizer.json` describes a pipeline of stages; ours maps onto it stage by stage:

- special tokens   -> "added_tokens" (special=True): cut out of the raw text first, longest match
                      first, never split or merged across, exactly as our tokenizer does;
- pre-tokenization -> "pre_tokenizer": a `Split` with GPT-2's regex (the pieces kept, "Isolated"),
                      then `ByteLevel` with its own regex switched off, which only maps every byte of a
                      piece to GPT-2's printable character for it;
- merges           -> "model": `BPE` over our vocab and merges, written in that printable form, merges in
                      rank order (the order we learned them, which is the order BPE applies them);
- decoding         -> "decoder": `ByteLevel`, printable characters back to bytes, then UTF-8.

There is no normalizer and no post-processor, so Hugging Face adds no BOS/EOS and produces exactly our ids.
The reverse direction (`byte_level_bpe_from_tokenizer_json`) accepts only tokenizers whose pipeline is
this one, because for any other pipeline our tokenizer would produce different ids from the same merges.
"""

from __future__ import annotations

from typing import Any

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization.pretokenize import GPT2_SPLIT_PATTERN
from NLM.min_lm.tokenization.tokenizer import from_printable, to_printable


def _from_printable(text: str, source: str) -> bytes:
    """`from_printable`, reporting a character outside GPT-2's printable alphabet against `source`."""
    try:
        return from_printable(text)
    except KeyError as e:
        raise UserError(f"{source}: token {text!r} is not in GPT-2's printable byte form: {e}") from None


def _pre_tokenizer() -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_SPLIT_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def tokenizer_json(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: dict[str, int]
) -> dict[str, Any]:
    """The `tokenizer.json` document for our tokenizer (`special_tokens` maps each special token to its id).

    Special tokens appear twice, as Hugging Face's own files do: in the BPE vocab under their literal text
    (so the id is reserved in the model) and in "added_tokens" (so they are matched before pre-tokenization).
    """
    special_ids = {i: s for s, i in special_tokens.items()}
    hf_vocab: dict[str, int] = {}
    for token_id in sorted(vocab):
        name = special_ids.get(token_id) or to_printable(vocab[token_id])
        if name in hf_vocab:
            raise UserError(
                f"tokens {hf_vocab[name]} and {token_id} are both {name!r}: "
                "a Hugging Face vocab needs every token to be distinct"
            )
        hf_vocab[name] = token_id
    added_tokens = [
        {"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for text, token_id in sorted(special_tokens.items(), key=lambda item: item[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": hf_vocab,
            # "a b" strings rather than [a, b] pairs: every tokenizers release reads them, and the printable
            # form never contains a space, so the split is unambiguous.
            "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in merges],
        },
    }


# GPT-2's regex as we write it, and as OpenAI's encoder.py spelled it (same matches).
GPT2_PATTERNS = (
    GPT2_SPLIT_PATTERN,
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
)


def _is_gpt2_pre_tokenizer(pre: dict[str, Any] | None) -> bool:
    """True for the pre-tokenizers that split exactly as ours: ByteLevel with its built-in regex (which is
    GPT-2's), or Split(GPT-2's regex) + ByteLevel(use_regex=False) as we write it."""
    if pre is None:
        return False
    if pre.get("type") == "ByteLevel":
        return bool(pre.get("use_regex", True)) and not pre.get("add_prefix_space", False)
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        if len(steps) == 1:
            return _is_gpt2_pre_tokenizer(steps[0])
        if len(steps) == 2:
            split, byte_level = steps
            return (
                split.get("type") == "Split"
                and split.get("pattern", {}).get("Regex") in GPT2_PATTERNS
                and split.get("behavior") == "Isolated"
                and not split.get("invert", False)
                and byte_level.get("type") == "ByteLevel"
                and byte_level.get("use_regex") is False
                and not byte_level.get("add_prefix_space", False)
            )
    return False


def byte_level_bpe_from_tokenizer_json(
    doc: dict[str, Any], source: str
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str]] | str:
    """Our (vocab, merges, special_tokens) from a `tokenizer.json` document with our pipeline.

    Returns a one-line reason instead when the pipeline differs (another regex, a normalizer, a
    post-processor that adds BOS, WordPiece...): such a tokenizer cannot be reproduced by ours.
    """
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        return f"its model is {model.get('type')!r}, not byte-level BPE"
    if any(model.get(key) for key in ("continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
        return "its BPE uses subword prefixes/suffixes or byte fallback"
    if doc.get("normalizer") is not None:
        return "it has a normalizer"
    if not _is_gpt2_pre_tokenizer(doc.get("pre_tokenizer")):
        return "its pre-tokenizer is not GPT-2's byte-level regex split"
    if doc.get("post_processor") not in (None, {}) and doc["post_processor"].get("type") != "ByteLevel":
        return "its post-processor adds tokens"

    if any(t.get(flag) for t in doc.get("added_tokens", []) for flag in ("lstrip", "rstrip", "single_word")):
        return "its added tokens strip spaces or match whole words only"

    added = {t["id"]: t["content"] for t in doc.get("added_tokens", [])}
    vocab: dict[int, bytes] = {}
    for name, token_id in model["vocab"].items():
        if token_id in added:
            vocab[token_id] = added[token_id].encode("utf-8")
        else:
            vocab[token_id] = _from_printable(name, source)
    for token_id, text in added.items():
        vocab.setdefault(token_id, text.encode("utf-8"))
    merges = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges.append((_from_printable(left, source), _from_printable(right, source)))
    # Our tokenizer has one kind of added token, the special token: matched verbatim before anything else.
    specials = [t["content"] for t in doc.get("added_tokens", [])]
    return vocab, merges, specials

"""Scoring a model on held-out tokens: mean loss, perplexity and bits per byte over a whole file.

The file is longer than the model's context, so it is scored in windows of `context_length` tokens. With
the default stride (= context_length) the windows do not overlap: cheap, but the first tokens of each
window are predicted from little context. A smaller stride overlaps the windows, and each window scores
only the tokens that no earlier window scored, so every token is scored exactly once, with at least
`context_length - stride` tokens of context (except at the start of the file):

    tokens    0 1 2 3 4 5 6 7 8 9          context 4, stride 2
    window 1  [0 1 2 3] -> scores 1 2 3 4
    window 2      [2 3 4 5] -> scores 5 6
    window 3          [4 5 6 7] -> scores 7 8
    window 4            [5 6 7 8] -> scores 9  (the last window ends at the file's end)

Token 0 has no context and is never scored. Bits per byte divide the total loss by the text's size in
bytes instead of tokens, so models with different tokenizers compare: bpb = nats * tokens / (bytes * ln 2).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer
from NLM.min_lm.tokenization.documents import BadRecords, iter_texts
from NLM.min_lm.transformer import TransformerLM


@dataclass
class EvalResult:
    loss: float  # mean negative log-likelihood, nats per token
    perplexity: float  # exp(loss)
    tokens: int  # tokens scored
    windows: int  # forward passes of context_length tokens
    context_length: int
    stride: int
    num_bytes: int | None = None  # UTF-8 bytes of the text scored, when it is known
    bits_per_byte: float | None = None


def window_plan(num_tokens: int, context_length: int, stride: int) -> list[tuple[int, int]]:
    """(start, skip) per window: the window is tokens[start : start + length + 1] (inputs and targets),
    and its first `skip` targets were scored by an earlier window. All windows have the same length,
    min(context_length, num_tokens - 1); the last one is moved back to end at the file's end."""
    length = min(context_length, num_tokens - 1)
    last_start = num_tokens - 1 - length
    plan, scored_to, start = [], 0, 0  # targets 1..scored_to are scored
    while True:
        start = min(start, last_start)
        plan.append((start, scored_to - start))
        scored_to = start + length
        if start == last_start:
            return plan
        start += stride


@torch.no_grad()
def evaluate_tokens(model: TransformerLM, tokens: np.ndarray, stride: int | None = None, batch_size: int = 8,
                    dtype: str = "float32", num_bytes: int | None = None,
                    progress: bool = False) -> EvalResult:
    """Score every token of `tokens` but the first (see the module docstring); `num_bytes`, the size of the
    text they encode, adds bits per byte. Log-probabilities are taken in float32 and summed in float64."""
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {len(tokens)}")
    context_length = model.config.context_length
    stride = stride or context_length
    if not 1 <= stride <= context_length:
        raise ValueError(f"stride must be in [1, context_length = {context_length}], got {stride}")
    device = next(model.parameters()).device
    plan = np.array(window_plan(len(tokens), context_length, stride))
    length = min(context_length, len(tokens) - 1)
    offsets = np.arange(length + 1)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    total, scored = 0.0, 0
    for first in tqdm(range(0, len(plan), batch_size), desc="eval", unit="batch", disable=not progress):
        starts, skips = plan[first:first + batch_size].T
        batch = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64)).to(device)
        with autocast:
            logits = model(batch[:, :-1])
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        nll = -log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1)  # (windows, length)
        keep = torch.arange(length, device=device)[None, :] >= torch.from_numpy(skips).to(device)[:, None]
        total += nll[keep].cpu().double().sum().item()  # float64 on the CPU: MPS has none
        scored += int(keep.sum())
    model.train(was_training)
    loss = total / scored
    bits_per_byte = loss * scored / (num_bytes * math.log(2)) if num_bytes else None
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700)), tokens=scored, windows=len(plan),
                      context_length=context_length, stride=stride, num_bytes=num_bytes,
                      bits_per_byte=bits_per_byte)


def encode_corpus(tokenizer: BPETokenizer, files: list[Path], text_field: str = "text",
                  bad_records: BadRecords | None = None) -> tuple[np.ndarray, int]:
    """The corpus's ids preceded by the end-of-text id, and the corpus's size in UTF-8 bytes.

    A document starts after end-of-text in training, so with it in front every token of the text is
    scored, and bits per byte count every byte."""
    num_bytes = 0

    def counted(pieces: Iterable[str]) -> Iterator[str]:
        nonlocal num_bytes
        for piece in pieces:
            num_bytes += len(piece.encode("utf-8"))
            yield piece

    ids = tokenizer.encode_iterable(counted(iter_texts(files, text_field, bad_records)))
    start = [tokenizer.encode(END_OF_TEXT)[0]] if END_OF_TEXT in tokenizer.special_tokens else []
    return np.fromiter(itertools.chain(start, ids), dtype=np.int64), num_bytes

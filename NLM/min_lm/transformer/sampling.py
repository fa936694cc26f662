"""Turning next-token logits into text: greedy decoding, temperature, top-k and nucleus (top-p) sampling.

A language model only scores the next token. `generate` repeats "score, pick one, append it":

    logits = model(window)[:, -1]                 # scores for the next token
    logits = logits / temperature                 # < 1 sharpens the distribution, > 1 flattens it
    keep the top_k highest / the top_p nucleus    # cut off the unlikely tail
    next_id ~ softmax(logits)                     # temperature 0 takes the argmax instead

The window is what the model sees: the last `context_length` tokens at positions 0, 1, ... . That
is the reference semantics, and `use_cache=False` computes exactly it, one full forward pass per
new token. With the KV cache (the default) each step runs the model on the new token only and the
earlier keys and values are read from the cache; the logits are the same up to rounding.

Rolling the window. Once the sequence is longer than the context, every step moves the window by
one token, so every cached key was computed at a position (and with a context) that is now wrong.
We re-prefill the cache with the window itself whenever a step would overflow it. Re-prefilling a
shorter window (e.g. the last context_length / 2 tokens) would be cheaper, but the tokens right
after it would then see less context than a full recompute gives them; we chose to keep the cache
a pure speed-up that never changes the output. So past the context length each step costs one
forward pass over the window, as it does without a cache.

Compiling the decoder (`compile_step=True`). A compiled function is specialised to its input shapes, and
the growing cache changes them every step. The fixed-size cache (kv_cache.py) keeps every one-token step
the same shape, so `torch.compile` traces it once; on CUDA it is compiled with mode="reduce-overhead", which
records the step as a CUDA graph and replays it, removing the per-kernel launch cost that dominates
decoding small batches. The prefill (the prompt, several tokens) runs eagerly.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row and set the others to -inf (ties with the k-th stay)."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to >= p.

    In order of decreasing probability a token is kept while the mass of the tokens before it is
    still below p, so the most likely token always survives (its mass before is 0).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits.float(), dim=-1).cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], dim=-1)
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token id per row of `logits` (batch, vocab) -> (batch,). Temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    # In float32 even from a bf16 model. The largest logit is subtracted first (softmax does not change),
    # so dividing by a tiny temperature gives 0 and -inf, the limit it should, rather than inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class _CachedWindow:
    """Feeds the model only the tokens its KV cache has not seen; re-prefills when the window moves.

    Invariant: the cache holds ids[:, start : start + cached] at positions 0 .. cached-1. `cached` is
    counted here, so that reading it never waits for the device (the fixed-size cache counts on it).
    """

    def __init__(self, model: nn.Module, batch_size: int, max_total_len: int, compile_step: bool = False):
        self.model = model
        self.context_length = model.config.context_length
        max_len = min(self.context_length, max_total_len)
        self.cache = model.new_kv_cache(batch_size, max_len=max_len, fixed_size=compile_step)
        self.start = 0
        self.cached = 0
        self.decode = model
        if compile_step:
            on_cuda = self.cache.position.is_cuda
            self.decode = torch.compile(model, mode="reduce-overhead" if on_cuda else None, dynamic=False)

    def next_logits(self, ids: Tensor) -> Tensor:
        window_start = max(0, ids.shape[1] - self.context_length)
        if window_start != self.start:  # the window moved: cached positions are stale
            self.cache.reset()
            self.start, self.cached = window_start, 0
        new_tokens = ids[:, self.start + self.cached :]
        forward = self.decode if new_tokens.shape[1] == 1 else self.model
        self.cached += new_tokens.shape[1]
        return forward(new_tokens, kv_cache=self.cache)[:, -1]


def _full_recompute(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The reference: one forward pass over the last context_length tokens per new token."""
    context_length = model.config.context_length
    return lambda ids: model(ids[:, -context_length:])[:, -1]


def _as_batch(prompt_ids: list[int] | Tensor, device: torch.device) -> tuple[Tensor, bool]:
    """The prompt as a (batch, T) LongTensor on `device`, and whether the caller gave one sequence."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if ids.dim() not in (1, 2):
        raise ValueError(f"prompt_ids must be a list, a 1-D or a 2-D tensor, got shape {tuple(ids.shape)}")
    single = ids.dim() == 1
    ids = ids.unsqueeze(0) if single else ids
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the <|endoftext|> id)")
    return ids, single


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompt_ids: list[int] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    eos_id: int | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[list[int]], None] | None = None,
    vocab_limit: int | None = None,
    compile_step: bool = False,
) -> Tensor:
    """Continue `prompt_ids` by up to `max_new_tokens` tokens; return prompt + new ids.

    prompt_ids: a list of ids or a 1-D tensor (one sequence; returns 1-D), or a (batch, T) tensor
    (independent sequences decoded together; returns (batch, T + new)).
    temperature: 0 means greedy (argmax); top_k / top_p filter before sampling (None = off).
    eos_id: a sequence stops after producing it (the eos is kept in the output); in a batch, rows
    that stopped are padded with eos_id until every row has stopped or max_new_tokens is reached.
    generator: a torch.Generator on the model's device, for reproducible sampling.
    use_cache: False recomputes the whole window every step (the slow reference).
    on_token: called after each step with the new ids, one per row, for streaming.
    vocab_limit: sample only ids below it, for a model whose vocabulary is padded past its tokenizer's
    (e.g. 50304 rows for GPT-2's 50257 tokens): ids the tokenizer cannot decode are never produced.
    compile_step: decode with the fixed-size cache and a compiled one-token step (module docstring); it
    pays on a GPU for long generations, after a compilation of tens of seconds.

    The model is put in eval mode for the call and restored to its previous mode afterwards.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    prompt, single = _as_batch(prompt_ids, device)
    batch_size, prompt_len = prompt.shape
    total_len = prompt_len + max_new_tokens
    # Room for the ids grows as they come (doubling), so a generous max_new_tokens costs nothing up front.
    ids = torch.empty(batch_size, min(total_len, 2 * prompt_len + 256), dtype=torch.long, device=device)
    ids[:, :prompt_len] = prompt
    length = prompt_len
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    try:
        if use_cache:
            next_logits = _CachedWindow(model, batch_size, total_len, compile_step).next_logits
        else:
            next_logits = _full_recompute(model)
        while length < total_len:
            logits = next_logits(ids[:, :length])
            if vocab_limit is not None:
                logits[:, vocab_limit:] = -torch.inf
            token = sample_next(logits, temperature, top_p, top_k, generator)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)
                finished |= token == eos_id
            if length == ids.shape[1]:
                more = min(ids.shape[1], total_len - length)
                ids = torch.cat([ids, ids.new_empty(batch_size, more)], dim=1)
            ids[:, length] = token
            length += 1
            if on_token is not None:
                on_token(token.tolist())
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    out = ids[:, :length]
    return out[0] if single else out


class TextStream:
    """Turns token ids into text as they arrive, never splitting a multi-byte UTF-8 character.

    A byte-level BPE token can end in the middle of a character ('é' is the two bytes c3 a9, which
    may be two tokens). `push` accumulates the tokens' bytes and returns the longest prefix that is
    complete UTF-8, holding back an unfinished character until its last byte arrives. Python's
    incremental UTF-8 decoder does exactly that and, like `BPETokenizer.decode`, turns invalid bytes
    into U+FFFD, so the pieces joined equal `decode` of all the ids.
    """

    def __init__(self, vocab: Mapping[int, bytes]):
        self.vocab = vocab
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        """The text completed by these token ids (possibly empty)."""
        return self._decoder.decode(b"".join(self.vocab[i] for i in ids))

    def flush(self) -> str:
        """Whatever is still held back: an unfinished character at the very end becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)

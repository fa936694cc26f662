"""generate / sampling: filters against hand-worked distributions, greedy == argmax loop, KV cache ==
full recompute (past the context length too), eos, seeding, batching, and UTF-8 streaming."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from NLM.min_lm.transformer import TransformerLM
from NLM.min_lm.transformer.sampling import TextStream, generate, sample_next, top_k_filter, top_p_filter

NEG_INF = float("-inf")


def tiny_model(dtype=torch.float64, context_length=16, vocab_size=40, seed=0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab_size, context_length, 32, 2, 4, 64, 10000.0, dtype=dtype)


# ---- filters -------------------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 5.5]])
    out = top_k_filter(logits, 2)
    assert torch.equal(out, torch.tensor([[NEG_INF, 4.0, 3.0, NEG_INF], [NEG_INF, NEG_INF, 5.0, 5.5]]))
    assert torch.equal(top_k_filter(logits, 4), logits)
    assert torch.equal(top_k_filter(logits, 99), logits)
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_top_p_hand_worked():
    # probabilities 0.5, 0.25, 0.15, 0.1 (in a shuffled order)
    probs = torch.tensor([0.15, 0.5, 0.1, 0.25], dtype=torch.float64)
    logits = probs.log()
    keep = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()  # noqa: E731
    assert keep(0.3) == [False, True, False, False]  # 0.5 >= 0.3 already
    assert keep(0.5) == [False, True, False, False]  # exactly reaching p is enough
    assert keep(0.6) == [False, True, False, True]  # 0.5 + 0.25 = 0.75 >= 0.6
    assert keep(0.8) == [True, True, False, True]  # 0.75 < 0.8 <= 0.9
    assert keep(0.95) == [True, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    assert keep(1e-9) == [False, True, False, False]  # at least one token always survives
    # kept logits are unchanged
    assert torch.equal(top_p_filter(logits, 0.6)[[1, 3]], logits[[1, 3]])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            top_p_filter(logits, bad)


@settings(deadline=None, max_examples=50)
@given(
    st.lists(st.floats(-5, 5), min_size=1, max_size=12),
    st.floats(0.01, 1.0),
)
def test_top_p_is_the_smallest_set_reaching_p(values, p):
    logits = torch.tensor(values, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1)
    kept = torch.isfinite(top_p_filter(logits, p))
    # everything kept is at least as likely as everything dropped
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()
    # the kept mass reaches p (up to rounding), and without its least likely member it would not
    mass = probs[kept].sum().item()
    assert mass >= p - 1e-6
    assert mass - probs[kept].min().item() < p + 1e-6


def test_sample_next_respects_filters_and_temperature():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    picked = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picked.tolist()) == {1, 2}
    picked = sample_next(logits, temperature=1.0, top_p=0.01, generator=g)
    assert set(picked.tolist()) == {1}
    # the empirical frequencies follow softmax(logits / T)
    for temperature in (0.5, 2.0):
        picked = sample_next(logits, temperature=temperature, generator=g)
        freq = torch.bincount(picked, minlength=4).double() / len(picked)
        expected = torch.softmax(logits[0].double() / temperature, dim=-1)
        assert torch.allclose(freq, expected, atol=0.04)
    assert torch.equal(sample_next(logits[:3], temperature=0), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError):
        sample_next(logits, temperature=-1.0)


# ---- generate ------------------------------------------------------------------------------------


def test_greedy_equals_an_argmax_loop():
    model = tiny_model()
    prompt = [3, 1, 4, 1, 5]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    out = generate(model, prompt, 8, temperature=0)
    assert out.dtype == torch.long and out.dim() == 1
    assert out.tolist() == ids


def test_cache_equals_full_recompute_past_the_context_length():
    model = tiny_model(context_length=16)
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with_cache = generate(model, prompt, 40, temperature=0, use_cache=True)
    without = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 43)
    assert torch.equal(with_cache, without)
    # the reference itself: each next token is the argmax over the last 16 tokens at positions 0..15
    seq = with_cache[0]
    with torch.no_grad():
        for t in (20, 30, 42):
            window = seq[max(0, t - 16) : t]
            assert int(model(window[None])[0, -1].argmax()) == int(seq[t])


def test_seeded_sampling_with_cache_equals_full_recompute_while_the_window_rolls():
    model = tiny_model(context_length=12)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # almost full: the cache rolls within a few steps
    a = generate(model, prompt, 30, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 30, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_prompt_longer_than_the_context():
    model = tiny_model(context_length=8)
    prompt = list(range(20))
    a = generate(model, prompt, 5, temperature=0)
    b = generate(model, prompt, 5, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a[:20].tolist() == prompt


def test_eos_stops_and_pads_finished_rows():
    model = tiny_model()
    free = generate(model, [1, 2], 10, temperature=0)
    eos = int(free[4])  # the 3rd generated token: make it the end-of-text token
    stopped = generate(model, [1, 2], 10, temperature=0, eos_id=eos)
    first_eos = free[2:].tolist().index(eos) + 2
    assert stopped.tolist() == free[: first_eos + 1].tolist()
    # in a batch, a row that stopped repeats eos while the others go on
    batch = torch.tensor([[1, 2], [2, 1]])
    free_b = generate(model, batch, 10, temperature=0)
    out = generate(model, batch, 10, temperature=0, eos_id=eos)
    for row, free_row in zip(out.tolist(), free_b.tolist(), strict=True):
        if eos in row[2:]:
            k = row.index(eos, 2)
            assert row[: k + 1] == free_row[: k + 1] and set(row[k:]) == {eos}
        else:
            assert row == free_row[: len(row)]


def test_seeded_sampling_is_reproducible_and_batched_rows_differ():
    model = tiny_model()
    kwargs = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = generate(model, [1, 2, 3], 20, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(model, [1, 2, 3], 20, generator=torch.Generator().manual_seed(7), **kwargs)
    c = generate(model, [1, 2, 3], 20, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    batch = generate(model, torch.tensor([[1, 2, 3]] * 4), 20, generator=g, **kwargs)
    assert batch.shape == (4, 23)
    assert len({tuple(r) for r in batch.tolist()}) > 1


def test_on_token_streams_every_step_and_mode_is_restored():
    model = tiny_model()
    model.train()
    seen: list[list[int]] = []
    out = generate(model, torch.tensor([[1], [2]]), 6, temperature=0, on_token=seen.append)
    assert model.training
    assert len(seen) == 6 and all(len(s) == 2 for s in seen)
    assert out[:, 1:].T.tolist() == seen
    model.eval()
    generate(model, [1], 2)
    assert not model.training


def test_generate_argument_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError):
        generate(model, torch.zeros(1, 1, 1, dtype=torch.long), 3)
    with pytest.raises(ValueError):
        generate(model, [1], -1)
    assert generate(model, [1, 2], 0).tolist() == [1, 2]


def test_float32_cache_logits_close_to_recompute():
    model = tiny_model(dtype=torch.float32, context_length=10)
    ids = torch.tensor([[4, 8, 15, 16, 23, 2, 7, 3, 9, 11]])
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        step = [model(ids[:, :4], kv_cache=cache)[:, -1]]
        step += [model(ids[:, t : t + 1], kv_cache=cache)[:, -1] for t in range(4, 10)]
        full = model(ids)[0, 3:]
    assert torch.allclose(torch.cat(step), full, atol=1e-5)
    assert not math.isnan(float(full.sum()))


# ---- streaming text ------------------------------------------------------------------------------


def test_text_stream_holds_back_split_characters():
    # 'é' = c3 a9 and '€' = e2 82 ac, each split over several tokens
    vocab = {0: b"caf", 1: b"\xc3", 2: b"\xa9 ", 3: b"\xe2", 4: b"\x82", 5: b"\xac!", 6: b"\xff"}
    stream = TextStream(vocab)
    assert [stream.push([i]) for i in (0, 1, 2, 3, 4, 5)] == ["caf", "", "é ", "", "", "€!"]
    assert stream.flush() == ""
    # an invalid byte becomes U+FFFD; an unfinished character at the end is flushed as U+FFFD
    stream = TextStream(vocab)
    assert stream.push([6, 0, 1]) == "\ufffdcaf"
    assert stream.flush() == "\ufffd"


@settings(deadline=None, max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=20))
def test_text_stream_pieces_join_to_the_full_decode(tokens):
    vocab = dict(enumerate(tokens))
    stream = TextStream(vocab)
    pieces = [stream.push([i]) for i in range(len(tokens))] + [stream.flush()]
    assert "".join(pieces) == b"".join(tokens).decode("utf-8", errors="replace")


def test_compiled_fixed_size_decoding_equals_full_recompute(monkeypatch):
    """compile_step: the fixed-size cache's one-token step is compiled once and serves every step,
    through the window rolling past the context; the tokens equal the full-recompute reference."""
    compile_ = torch.compile
    options_seen = []

    def compile_without_inductor(model, **options):  # aot_eager: traced as inductor would, no C++ build
        options_seen.append(options)
        return compile_(model, backend="aot_eager", fullgraph=True, **options)

    monkeypatch.setattr(torch, "compile", compile_without_inductor)
    torch._dynamo.reset()
    model = tiny_model(context_length=12)
    prompt = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(model, prompt, 20, temperature=0, compile_step=True)
    assert options_seen == [{"mode": None, "dynamic": False}]
    assert torch.equal(compiled, generate(model, prompt, 20, temperature=0, use_cache=False))

"""`minlm eval` against losses computed by hand: full-sequence forwards and log_softmax in float64."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from NLM.min_lm.evaluation import evaluate_tokens, window_plan
from NLM.min_lm.scripts.evaluate import main
from NLM.min_lm.tokenization import BPETokenizer, train_bpe
from NLM.min_lm.transformer import TransformerLM, save_checkpoint

EOS = "<|endoftext|>"
VOCAB, CONTEXT = 300, 8
TEXT = "The fox ran. The bear sat. Café crème! " * 6


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(VOCAB, CONTEXT, 32, 2, 4, 64).eval()


def nll_by_hand(model: TransformerLM, ids: list[int], context_start: dict[int, int]) -> list[float]:
    """-log p(ids[t] | ids[context_start[t]:t]) for each target t, from a float64 copy of the model: one
    full forward of exactly that context per target."""
    reference = TransformerLM.from_config(model.config, dtype=torch.float64)
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    losses = []
    with torch.no_grad():
        for t, start in sorted(context_start.items()):
            logits = reference(torch.tensor([ids[start:t]]))[0, -1]
            losses.append(-torch.log_softmax(logits, dim=-1)[ids[t]].item())
    return losses


def test_one_window_equals_a_full_sequence_forward(model):
    ids = np.random.default_rng(0).integers(0, VOCAB, size=CONTEXT + 1)
    result = evaluate_tokens(model, ids)
    expected = nll_by_hand(model, ids.tolist(), {t: 0 for t in range(1, len(ids))})
    assert result.tokens == CONTEXT and result.windows == 1
    assert result.loss == pytest.approx(np.mean(expected), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(np.mean(expected)), rel=1e-5)


def test_stride_scores_each_token_once_with_the_documented_context(model):
    """The docstring's example, worked by hand: 10 tokens, context 4, stride 2."""
    assert window_plan(10, 4, 2) == [(0, 0), (2, 2), (4, 2), (5, 3)]
    ids = np.random.default_rng(1).integers(0, VOCAB, size=3 * CONTEXT + 2)  # 26 tokens, 25 targets
    # context 8, stride 3: windows start at 0, 3, 6, ..., 15, then 17 (moved back to end at token 25);
    # the first scores targets 1..8, each later one the targets after the previous window's last
    starts = {t: 0 for t in range(1, 9)}
    for start, last_target in [(3, 11), (6, 14), (9, 17), (12, 20), (15, 23), (17, 25)]:
        starts.update({t: start for t in range(max(starts) + 1, last_target + 1)})
    expected = nll_by_hand(model, ids.tolist(), starts)
    result = evaluate_tokens(model, ids, stride=3, batch_size=4)
    assert result.tokens == 25 and result.windows == 7
    assert result.loss == pytest.approx(np.mean(expected), rel=1e-5)
    # without overlap (the default), each window starts its context afresh
    plain = nll_by_hand(model, ids.tolist(), {**{t: 0 for t in range(1, 9)}, **{t: 8 for t in range(9, 17)},
                                              **{t: 16 for t in range(17, 25)}, 25: 17})
    assert evaluate_tokens(model, ids, batch_size=2).loss == pytest.approx(np.mean(plain), rel=1e-5)


@given(st.integers(2, 200), st.integers(1, 32), st.data())
def test_window_plan_scores_every_target_once(num_tokens, context_length, data):
    stride = data.draw(st.integers(1, context_length))
    length = min(context_length, num_tokens - 1)
    scored = []
    for start, skip in window_plan(num_tokens, context_length, stride):
        assert 0 <= start and start + length <= num_tokens - 1
        targets = list(range(start + 1 + skip, start + length + 1))
        if start > 0:  # every scored token has at least context_length - stride tokens before it
            assert targets[0] - start >= length - stride
        scored += targets
    assert scored == list(range(1, num_tokens))


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("eval")
    (root / "corpus.txt").write_text(EOS.join([TEXT, TEXT.upper()]), encoding="utf-8")
    vocab, merges = train_bpe(root / "corpus.txt", VOCAB, [EOS])
    tokenizer = BPETokenizer(vocab, merges, [EOS])
    tokenizer.save(root / "vocab.json", root / "merges.txt")
    save_checkpoint(model, None, 0, root / "model.pt")
    (root / "test.txt").write_text(TEXT, encoding="utf-8")
    ids = np.random.default_rng(2).integers(0, VOCAB, size=40).astype(np.uint16)
    np.save(root / "test.npy", ids)
    return root, tokenizer


def run_json(capsys, argv) -> dict:
    assert main(argv + ["--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_text_gives_bits_per_byte(files, model, capsys):
    root, tokenizer = files
    out = run_json(capsys, ["--checkpoint", str(root / "model.pt"), "--text", str(root / "test.txt"),
                            "--vocab_path", str(root / "vocab.json"),
                            "--merges_path", str(root / "merges.txt"), "--device", "cpu"])
    ids = [tokenizer.encode(EOS)[0]] + tokenizer.encode(TEXT)  # EOS first: every text token is scored
    plan = window_plan(len(ids), CONTEXT, CONTEXT)
    starts = {}
    for start, skip in plan:
        starts.update({t: start for t in range(start + 1 + skip, start + CONTEXT + 1)})
    nats = nll_by_hand(model, ids, starts)
    num_bytes = len(TEXT.encode("utf-8"))
    assert out["tokens"] == len(ids) - 1 and out["num_bytes"] == num_bytes
    assert out["loss"] == pytest.approx(np.mean(nats), rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(sum(nats) / (num_bytes * math.log(2)), rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(out["loss"] * out["tokens"] / (num_bytes * math.log(2)))


def test_cli_tokens_and_table(files, model, capsys):
    root, _ = files
    argv = ["--checkpoint", str(root / "model.pt"), "--tokens", str(root / "test.npy"), "--device", "cpu",
            "--stride", "4", "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    expected = evaluate_tokens(model, np.load(root / "test.npy"), stride=4)
    assert f"{expected.loss:.4f} nats/token" in table and "39 scored in" in table
    assert "bits/byte" not in table  # tokens alone do not say how many bytes they were


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --tokens"),
    (["--tokens", "x.npy", "--text", "x.txt"], "give exactly one of --tokens"),
    (["--text", "x.txt"], "--text needs the tokenizer"),
    (["--tokens", "{root}/test.npy", "--stride", "9"], "--stride 9 exceeds the model's context length 8"),
    (["--tokens", "{root}/missing.npy"], "--tokens .*missing.npy: no such file"),
    (["--text", "{root}/*.none", "--vocab_path", "{root}/vocab.json", "--merges_path", "{root}/merges.txt"],
     "--text .*: the pattern matches no files"),
])
def test_cli_errors_are_one_line(files, capsys, argv, message):
    root, _ = files
    try:  # flag mistakes exit from the parser, mistakes found later return the status
        code = main(["--checkpoint", str(root / "model.pt"), "--device", "cpu", "--no-progress",
                     *[a.format(root=root) for a in argv]])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err

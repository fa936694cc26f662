"""`minlm generate` end to end on a tiny checkpoint and a tiny tokenizer made here.

(The README's library examples, which load a checkpoint and generate, run in tests/test_readme.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from NLM.min_lm.scripts.generate import main
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer, train_bpe
from NLM.min_lm.transformer import TransformerLM, load_model, save_checkpoint
from NLM.min_lm.transformer.sampling import generate

EOS = END_OF_TEXT
STORY = (
    "Once upon a time there was a little fox. The fox liked to run in the forest. "
    "One day the fox met a bear. The bear said: hello, little fox! Café crème, naïve, déjà vu. "
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    corpus = root / "corpus.txt"
    corpus.write_text(EOS.join([STORY * 3, STORY.upper(), STORY * 2]), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 300, [EOS])
    tokenizer = BPETokenizer(vocab, merges, [EOS])
    paths = {"vocab": root / "vocab.json", "merges": root / "merges.txt", "checkpoint": root / "model.pt"}
    tokenizer.save(paths["vocab"], paths["merges"])
    torch.manual_seed(0)
    save_checkpoint(TransformerLM(len(tokenizer), 24, 32, 2, 4, 64), None, 0, paths["checkpoint"])
    paths["wrong_vocab"] = root / "wrong.pt"
    save_checkpoint(TransformerLM(len(tokenizer) - 1, 24, 32, 2, 4, 64), None, 0, paths["wrong_vocab"])
    paths["padded"] = root / "padded.pt"  # more rows than tokens, as with GPT-2's 50257 padded to 50304
    save_checkpoint(TransformerLM(len(tokenizer) + 40, 24, 32, 2, 4, 64), None, 0, paths["padded"])
    paths["truncated"] = root / "truncated.pt"
    paths["truncated"].write_bytes(paths["checkpoint"].read_bytes()[:3000])
    return paths


def flags(files, *extra: str, checkpoint: str = "checkpoint") -> list[str]:
    return ["--checkpoint", str(files[checkpoint]), "--vocab_path", str(files["vocab"]),
            "--merges_path", str(files["merges"]), "--device", "cpu", *extra]


def test_cli_streams_text_as_a_subprocess(files):
    result = subprocess.run(
        [sys.executable, "-m", "NLM.min_lm.cli", "generate",
         *flags(files, "--prompt", "Once upon a time", "--max_tokens", "20", "--seed", "1")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time") and len(result.stdout) > len("Once upon a time\n")


def test_greedy_output_equals_the_library(files, capsys):
    assert main(flags(files, "--prompt", "The fox", "--max_tokens", "30", "--temperature", "0")) == 0
    printed = capsys.readouterr().out
    tokenizer = BPETokenizer.from_files(files["vocab"], files["merges"], [EOS])
    model, _ = load_model(files["checkpoint"])
    eos_id = tokenizer.encode(EOS)[0]
    ids = generate(model, tokenizer.encode("The fox"), 30, temperature=0, eos_id=eos_id).tolist()
    ids = ids[: ids.index(eos_id)] if eos_id in ids else ids
    assert printed == tokenizer.decode(ids) + "\n"


def test_seed_reproduces_and_samples_are_batched(files, capsys):
    def sample(*extra: str) -> str:
        assert main(flags(files, "--prompt", "One day", "--max_tokens", "15", *extra)) == 0
        return capsys.readouterr().out

    assert sample("--seed", "3", "--top_k", "50", "--top_p", "0.9") == sample(
        "--seed", "3", "--top_k", "50", "--top_p", "0.9")
    assert sample("--seed", "3") != sample("--seed", "4")
    batch = sample("--seed", "3", "--num_samples", "3", "--temperature", "0.7")
    assert [line for line in batch.splitlines() if line.startswith("--- sample")] == [
        f"--- sample {i} of 3 ---" for i in (1, 2, 3)]


def test_a_padded_model_vocabulary_only_samples_the_tokenizers_ids(files, capsys):
    model, _ = load_model(files["padded"])
    with torch.no_grad():  # make the padding rows the most likely: they must still never be sampled
        model.lm_head.weight[-40:] = 10 * model.lm_head.weight[:40]
    n_tokens = len(BPETokenizer.from_files(files["vocab"], files["merges"], [EOS]))
    ids = generate(model, [1, 2, 3], 40, temperature=1.0, vocab_limit=n_tokens,
                   generator=torch.Generator().manual_seed(0))
    assert ids.max().item() < n_tokens
    assert main(flags(files, "--prompt", "The fox", "--max_tokens", "20", "--seed", "0",
                      checkpoint="padded")) == 0
    assert capsys.readouterr().out.startswith("The fox")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_checkpoint", "does not exist"),
        ("truncated_checkpoint", "truncated"),
        ("missing_vocab", "missing.json"),
        ("swapped_vocab_and_merges", "invalid JSON"),
        ("vocab_mismatch", "does not match the model"),
        ("empty_prompt", "--prompt is empty"),
        ("bad_top_p", "--top_p"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(files, capsys, case, expected):
    vocab, merges = str(files["vocab"]), str(files["merges"])
    argv = {
        "missing_checkpoint": ["--checkpoint", "missing.pt", "--vocab_path", vocab,
                               "--merges_path", merges, "--prompt", "x"],
        "truncated_checkpoint": flags(files, "--prompt", "x", checkpoint="truncated"),
        "missing_vocab": ["--checkpoint", str(files["checkpoint"]), "--vocab_path", "missing.json",
                          "--merges_path", merges, "--prompt", "x"],
        "swapped_vocab_and_merges": ["--checkpoint", str(files["checkpoint"]), "--prompt", "x",
                                     "--vocab_path", merges, "--merges_path", vocab],
        "vocab_mismatch": flags(files, "--prompt", "x", checkpoint="wrong_vocab"),
        "empty_prompt": flags(files, "--prompt", ""),
        "bad_top_p": flags(files, "--prompt", "x", "--top_p", "1.5"),
    }[case]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err and expected in err, err


def exit_code(argv: list[str]) -> int:
    """main's status, whether it returns it or (for flag errors, via argparse) exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


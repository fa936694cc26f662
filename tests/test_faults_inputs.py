"""Malformed inputs (issue 13): checkpoints that load but are wrong, Hugging Face directories, flags and
config files, vocab files, library misuse. Each class gives one clear error (one `error:` line from a
command), never a traceback, a huge allocation or a silently wrong result."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from fault_helpers import one_line_error, run_module
from train_helpers import as_argv, tiny_flags, write_tokens

from NLM.min_lm.errors import UserError
from NLM.min_lm.scripts import generate, train, train_tokenizer
from NLM.min_lm.tokenization import BPETokenizer
from NLM.min_lm.transformer import TransformerLM
from NLM.min_lm.transformer.checkpoint import load_model, read_checkpoint
from NLM.min_lm.transformer.model import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2)


def _byte_tokenizer(tmp_path):
    tok = BPETokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    tok.save(tmp_path / "v.json", tmp_path / "m.txt")
    return tmp_path / "v.json", tmp_path / "m.txt"


@pytest.fixture
def flags(tmp_path):
    return tiny_flags(train_tokens=str(write_tokens(tmp_path, "train.npy")),
                      val_tokens=str(write_tokens(tmp_path, "val.npy", n=1000, seed=1)),
                      checkpoint_path=str(tmp_path / "run" / "model.pt"), max_iters=2, eval_interval=1,
                      checkpoint_interval=1, vocab_size=300)  # room for a byte-level tokenizer's 257 ids


@pytest.fixture
def trained(tmp_path, flags):
    """A real training checkpoint (with optimizer, RNG, sampler state), the file every command reads."""
    assert train.main(as_argv(flags)) == 0
    return tmp_path / "run" / "model.pt"


# ------------------------------------------------------------------------------ malformed checkpoints

def _edit(ckpt: dict, change: str) -> None:
    """One malformation per case; each is something a hand edit or another program could produce."""
    config = ckpt["model_config"]
    edits = {
        "extra config key": lambda: config.update(dropout=0.1),
        "missing config key": lambda: config.pop("d_model"),
        "config value of the wrong type": lambda: config.update(num_heads="2"),
        "zero heads": lambda: config.update(num_heads=0),
        "non-dividing heads": lambda: config.update(num_heads=3),
        "negative size": lambda: config.update(d_ff=-64),
        "nan rope_theta": lambda: config.update(rope_theta=math.nan),
        "vocab of 1e12": lambda: config.update(vocab_size=10**12),
        "config not a dict": lambda: ckpt.update(model_config=[1, 2]),
        "model not a dict": lambda: ckpt.update(model=[torch.zeros(1)]),
        "model holds a non-tensor": lambda: ckpt["model"].update({"lm_head.weight": [0.0]}),
        "iteration not an int": lambda: ckpt.update(iteration="3"),
        "iteration a float": lambda: ckpt.update(iteration=3.0),
        "negative iteration": lambda: ckpt.update(iteration=-1),
        "optimizer not a state dict": lambda: ckpt.update(optimizer=[1]),
        "torch rng state wrong": lambda: ckpt["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
        "numpy rng state short": lambda: ckpt["rng"]["numpy"].__setitem__(1, [1, 2, 3]),
        "python rng state wrong": lambda: ckpt["rng"].update(python=[3, [1], None]),
        "rng not a dict": lambda: ckpt.update(rng="seed"),
        "sampler state wrong": lambda: ckpt.update(sampler_state={"bit_generator": "PCG64", "state": 5}),
        "best_val_loss a string": lambda: ckpt.update(best_val_loss="low"),
        "elapsed negative": lambda: ckpt.update(elapsed=-5.0),
        "train_config not a dict": lambda: ckpt.update(train_config="x"),
    }
    edits[change]()


CHANGES = ["extra config key", "missing config key", "config value of the wrong type", "zero heads",
           "non-dividing heads", "negative size", "nan rope_theta", "vocab of 1e12", "config not a dict",
           "model not a dict", "model holds a non-tensor", "iteration not an int", "iteration a float",
           "negative iteration", "optimizer not a state dict", "torch rng state wrong",
           "numpy rng state short", "python rng state wrong", "rng not a dict", "sampler state wrong",
           "best_val_loss a string", "elapsed negative", "train_config not a dict"]


@pytest.mark.parametrize("change", CHANGES)
def test_malformed_checkpoint_is_refused_on_read(trained, tmp_path, change):
    ckpt = torch.load(trained, weights_only=True)
    _edit(ckpt, change)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(UserError, match=f"checkpoint {bad}"):
        read_checkpoint(bad)


@pytest.mark.parametrize("change", ["vocab of 1e12", "zero heads", "iteration not an int", "rng not a dict"])
@pytest.mark.parametrize("command", ["generate", "resume", "init_from", "export"])
def test_every_command_that_reads_a_checkpoint_says_one_line(trained, tmp_path, flags, capsys, change,
                                                              command):
    ckpt = torch.load(trained, weights_only=True)
    _edit(ckpt, change)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    vocab, merges = _byte_tokenizer(tmp_path)
    if command == "generate":
        code = generate.main(["--checkpoint", str(bad), "--vocab_path", str(vocab),
                              "--merges_path", str(merges), "--prompt", "a", "--max_tokens", "2",
                              "--device", "cpu"])
    elif command == "export":
        pytest.importorskip("safetensors")
        from NLM.min_lm.scripts import export_hf

        code = export_hf.main(["--checkpoint", str(bad), "--vocab_path", str(vocab), "--merges_path",
                               str(merges), "--out", str(tmp_path / "hf")])
    elif command == "resume":
        bad.replace(trained)
        code = train.main(as_argv({**flags, "resume": True, "max_iters": 4}))
    else:
        code = train.main(as_argv({**flags, "init_from": str(bad), "overwrite": True}))
    assert code == 2
    one_line_error(capsys, "malformed" if change != "zero heads" else "num_heads")


def test_resume_needs_the_training_state(trained, flags, capsys):
    ckpt = torch.load(trained, weights_only=True)
    del ckpt["best_val_loss"]
    torch.save(ckpt, trained)
    assert train.main(as_argv({**flags, "resume": True, "max_iters": 4})) == 2
    one_line_error(capsys, "--resume", "best_val_loss")


def test_a_good_checkpoint_still_loads_and_generates(trained):
    model, ckpt = load_model(trained)
    assert ckpt["iteration"] == 2 and model.config == ModelConfig(**{**SHAPE, "vocab_size": 300, "d_ff": 128})


# ------------------------------------------------------------------------------ Hugging Face directories


def _hf_dir(tmp_path, **config_changes):
    safetensors = pytest.importorskip("safetensors.torch")
    from NLM.min_lm.hf.llama import to_llama_config, to_llama_weights

    model = TransformerLM(**SHAPE, d_ff=32, rope_theta=10000.0)
    hf = tmp_path / "hf"
    hf.mkdir()
    config = {**to_llama_config(model.config, 0, 0, torch.float32), **config_changes}
    (hf / "config.json").write_text(json.dumps(config))
    safetensors.save_file(to_llama_weights(model.state_dict(), model.config), hf / "model.safetensors")
    return hf


def _import(hf, tmp_path):
    return run_module("import_hf", str(hf), "--out", str(tmp_path / "out.pt"))


@pytest.mark.parametrize("change, named", [
    ({"num_attention_heads": 0}, "num_heads"), ({"num_attention_heads": 3}, "num_heads"),
    ({"hidden_size": -32}, "d_model"), ({"vocab_size": "64"}, "vocab_size"),
    ({"vocab_size": None}, "vocab_size"),
    ({"num_hidden_layers": 1.5}, "num_hidden_layers"), ({"rms_norm_eps": "small"}, "rms_norm_eps"),
    ({"rope_parameters": {"rope_theta": [1]}}, "rope_theta"), ({"rope_scaling": "none"}, "rope_scaling"),
    ({"intermediate_size": True}, "intermediate_size"),
])
def test_hf_config_values_are_checked(tmp_path, change, named):
    hf = _hf_dir(tmp_path, **change)
    proc = _import(hf, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and named in proc.stderr and "config.json" in proc.stderr


def test_hf_config_that_is_not_utf8(tmp_path):
    hf = _hf_dir(tmp_path)
    (hf / "config.json").write_bytes(b'{"model_type": "llama\xff"}')
    proc = _import(hf, tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not UTF-8" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_safetensors(tmp_path, damage):
    hf = _hf_dir(tmp_path)
    data = (hf / "model.safetensors").read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "random": random.Random(0).randbytes(5000), "empty": b""}
    (hf / "model.safetensors").write_bytes(damaged[damage])
    proc = _import(hf, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "model.safetensors" in proc.stderr
    assert not (tmp_path / "out.pt").exists()


def _sharded(tmp_path, shard_name: str):
    hf = _hf_dir(tmp_path)
    names = json.loads(json.dumps(list(__import__("safetensors.torch").torch.load_file(
        hf / "model.safetensors"))))
    (hf / "model.safetensors").rename(hf / "model-00001-of-00001.safetensors")
    index = {"weight_map": {name: "model-00001-of-00001.safetensors" for name in names}}
    index["weight_map"][names[0]] = shard_name
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    return hf


@pytest.mark.parametrize("shard, message", [
    ("model-00002-of-00002.safetensors", "missing"),
    ("../secret.safetensors", "outside the model directory"),
    ("/etc/passwd", "outside the model directory"),
    ("sub/../../secret.safetensors", "outside the model directory"),
    (None, "not a file name"),
])
def test_shard_index_names_only_files_inside_the_directory(tmp_path, shard, message):
    hf = _sharded(tmp_path, shard)
    (tmp_path / "secret.safetensors").write_bytes((hf / "model-00001-of-00001.safetensors").read_bytes())
    proc = _import(hf, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "None: None" not in proc.stderr


def test_a_sound_sharded_directory_still_imports(tmp_path):
    hf = _sharded(tmp_path, "model-00001-of-00001.safetensors")
    assert _import(hf, tmp_path).returncode == 0 and read_checkpoint(tmp_path / "out.pt")["iteration"] == 0


# ------------------------------------------------------------------------------ flags and config files


@pytest.mark.parametrize("flag, value", [
    ("seed", "-1"), ("lr_max", "nan"), ("lr_max", "inf"), ("lr_min", "-inf"), ("rope_theta", "nan"),
    ("weight_decay", "inf"), ("grad_clip", "nan"), ("betas", "nan 0.9"), ("max_iters", str(2**70)),
])
def test_train_numeric_flags(flags, flag, value):
    values = value.split()  # ("--lr_min=-inf": argparse would take a separate "-inf" for a flag)
    given = [f"--{flag}={value}"] if len(values) == 1 else [f"--{flag}", *values]
    proc = run_module("train", *as_argv(flags), *given)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--{flag} must" in proc.stderr  # the flag is the subject


@pytest.mark.parametrize("flag, value", [
    ("seed", str(2**64)), ("seed", "-5"), ("temperature", "nan"), ("temperature", "inf"), ("top_p", "nan"),
    ("max_tokens", str(10**30)),
])
def test_generate_numeric_flags(trained, tmp_path, flag, value):
    vocab, merges = _byte_tokenizer(tmp_path)
    proc = run_module("generate", "--checkpoint", str(trained), "--vocab_path", str(vocab), "--merges_path",
                      str(merges), "--prompt", "a", "--device", "cpu", f"--{flag}", value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--{flag} must" in proc.stderr  # the flag is the subject


def test_tiny_temperature_is_greedy_and_huge_max_tokens_allocates_nothing_up_front(trained, tmp_path, capsys):
    vocab, merges = _byte_tokenizer(tmp_path)
    common = ["--checkpoint", str(trained), "--vocab_path", str(vocab), "--merges_path", str(merges),
              "--prompt", "a", "--device", "cpu", "--max_tokens", "8"]
    assert generate.main([*common, "--temperature", "1e-40", "--seed", "1"]) == 0
    tiny = capsys.readouterr().out
    assert generate.main([*common, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tiny  # the limit of sampling as temperature -> 0 is the argmax
    from NLM.min_lm.transformer.sampling import generate as sample

    model, _ = load_model(trained)
    with torch.no_grad():
        first = int(model(torch.tensor([[1, 2]]))[0, -1].argmax())
    ids = sample(model, torch.tensor([1, 2]), 2**40, temperature=0.0, eos_id=first)
    assert ids.tolist() == [1, 2, first]  # stopped at the eos, having allocated only what it used


@pytest.mark.parametrize("key, value", [("train_tokens", 5), ("max_iters", "10"), ("lr_max", "0.1"),
                                        ("quiet", "yes"), ("betas", [0.9]), ("betas", "0.9 0.95"),
                                        ("max_iters", 1.5), ("seed", True)])
def test_config_file_values_of_the_wrong_type(tmp_path, flags, key, value):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**flags, key: value}))
    proc = run_module("train", "--config", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr and key in proc.stderr


def test_check_value_covers_every_numeric_type():
    from NLM.min_lm.args import check_value  # (imported here: new with issue 13)

    for value, tp in [(math.nan, float), (math.inf, float | None), (2**63, int), (True, int), ("1", int),
                      (1, str), ([1.0, math.nan], tuple[float, float]), ([1, "x"], list[int])]:
        with pytest.raises(UserError):
            check_value("x", value, tp)
    for value, tp in [(1, float), (None, float | None), (-(2**62), int), ([0.9, 0.95], tuple[float, float])]:
        check_value("x", value, tp)


# ------------------------------------------------------------------------------ vocab files


@pytest.mark.parametrize("big_id", [2**16 + 5, 2**32, 2**63, 2**64 + 1])
def test_vocab_ids_beyond_the_token_file_range(tmp_path, big_id):
    vocab, merges = _byte_tokenizer(tmp_path)
    data = json.loads(vocab.read_text())
    data["<|endoftext|>"] = big_id
    vocab.write_text(json.dumps(data))
    (tmp_path / "in.txt").write_text("hello<|endoftext|>")
    proc = run_module("tokenize", "--inputs", str(tmp_path / "in.txt"), "--vocab_path", str(vocab),
                      "--merges_path", str(merges), "--output_dir", str(tmp_path / "out"))
    assert "Traceback" not in proc.stderr, proc.stderr
    if big_id < 2**32:  # fits the widest token file: written as uint32, read back exactly
        assert proc.returncode == 0 and np.load(tmp_path / "out" / "in.npy").tolist()[-1] == big_id
    else:
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "v.json" in proc.stderr


# ------------------------------------------------------------------------------ library misuse


def test_special_tokens_given_as_a_string_are_refused(tmp_path):
    vocab, merges = _byte_tokenizer(tmp_path)
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.from_files(vocab, merges, "<|endoftext|>")
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer({i: bytes([i]) for i in range(256)}, [], "<|endoftext|>")
    with pytest.raises(TypeError):
        BPETokenizer({i: bytes([i]) for i in range(256)}, [], [b"<|endoftext|>"])


def test_decode_takes_tensors_and_arrays():
    tok = BPETokenizer({i: bytes([i]) for i in range(256)}, [])
    ids = [104, 105]
    for form in (torch.tensor(ids), np.array(ids), [torch.tensor(i) for i in ids], [np.int64(i) for i in ids],
                 torch.tensor(ids, dtype=torch.int32)):
        assert tok.decode(form) == "hi"
    assert tok.decode(torch.tensor(104)) == "h"
    with pytest.raises(TypeError):
        tok.decode([104.0])
    with pytest.raises(ValueError, match="unknown token id 999"):
        tok.decode(torch.tensor([999]))


def test_vocab_argument_checks():
    with pytest.raises(ValueError, match="vocab id"):
        BPETokenizer({**{i: bytes([i]) for i in range(256)}, -1: b"ab"}, [])
    with pytest.raises(TypeError, match="bytes"):
        BPETokenizer({**{i: bytes([i]) for i in range(256)}, 256: "ab"}, [])


# ------------------------------------------------------------------------------ smaller


def test_empty_merges_file_is_refused_but_a_header_only_file_is_zero_merges(tmp_path):
    vocab, merges = _byte_tokenizer(tmp_path)
    assert BPETokenizer.from_files(vocab, merges).merges == []
    merges.write_text("")
    with pytest.raises(UserError, match="empty"):
        BPETokenizer.from_files(vocab, merges)


def test_one_utf8_policy_for_train_tokenizer_and_tokenize(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 10 + b"caf\xe9\n")
    assert train_tokenizer.main([str(bad), "--vocab_size", "260", "--output_dir", str(tmp_path / "t"),
                                 "--no-progress"]) == 2
    trained_error = one_line_error(capsys, "bad.txt", "not UTF-8", "offset 123")
    assert not (tmp_path / "t").exists()
    vocab, merges = _byte_tokenizer(tmp_path)
    proc = run_module("tokenize", "--inputs", str(bad), "--vocab_path", str(vocab),
                      "--merges_path", str(merges), "--output_dir", str(tmp_path / "o"), "--no-progress")
    assert proc.returncode == 2 and proc.stderr.strip() == trained_error


def test_the_longest_token_print_is_capped(tmp_path, capsys):
    text = tmp_path / "spaces.txt"
    text.write_text("a" + " " * 20_000 + "b\n")
    assert train_tokenizer.main([str(text), "--vocab_size", "300", "--output_dir", str(tmp_path / "t"),
                                 "--no-progress", "--num_workers", "1"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("longest token"))
    assert len(line) < 120 and "bytes)" in line

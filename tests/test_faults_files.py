"""Outputs under hostile conditions (issue 13): a full disk, a read-only directory, a path through a file,
killed writers, two runs at once, exports onto their own inputs. Each class of fault ends in one
`error:` line naming the path and the cause, with the previous outputs intact and nothing half-written."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import no_temp_files, one_line_error, run_module
from train_helpers import as_argv, tiny_flags, write_tokens

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path, atomic_write_text
from NLM.min_lm.hf import export_hf
from NLM.min_lm.scripts import train, train_tokenizer
from NLM.min_lm.tokenization import BPETokenizer
from NLM.min_lm.transformer import TransformerLM, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 40


def _tokenizer(extra_merges: int = 3) -> BPETokenizer:
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"t", b"h"), (b"th", b"e"), (b"a", b"t"), (b"s", b"at"), (b"o", b"n")][:extra_merges]
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return BPETokenizer(vocab, merges, ["<|endoftext|>"])


@pytest.fixture
def flags(tmp_path):
    return tiny_flags(train_tokens=str(write_tokens(tmp_path, "train.npy")),
                      val_tokens=str(write_tokens(tmp_path, "val.npy", n=1000, seed=1)),
                      checkpoint_path=str(tmp_path / "run" / "model.pt"), max_iters=4, eval_interval=2,
                      checkpoint_interval=2)


def _inject(monkeypatch, error: int, when=lambda path: True) -> None:
    """Make writes to our temporary files fail as the kernel would with `error`, at the one seam every
    writer goes through: opening the temporary file for writing (a full disk fails the writes: we give
    /dev/full, whose writes really fail with ENOSPC; other errors fail the open)."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if isinstance(name, str) and name.endswith(".tmp") and "w" in mode and when(name):
            if error == errno.ENOSPC:
                return real_open("/dev/full", mode, *args, **kwargs)
            raise OSError(error, os.strerror(error), name)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


# ------------------------------------------------------------------------------ operating-system errors


@pytest.mark.parametrize("error, cause", [(errno.ENOSPC, "no space left"), (errno.EROFS, "Read-only"),
                                          (errno.EACCES, "Permission denied")])
def test_a_failing_write_names_the_output_and_keeps_the_old_one(tmp_path, monkeypatch, error, cause):
    model = TransformerLM(64, 8, 16, 1, 2, 32, 10000.0)
    path = tmp_path / "model.pt"
    save_checkpoint(model, None, 1, path)
    before = path.read_bytes()
    _inject(monkeypatch, error)
    writes = (lambda: save_checkpoint(model, None, 2, path), lambda: atomic_write_text(path, "x" * 10**6))
    for write in writes:
        with pytest.raises(UserError, match=f"cannot write {path}: .*{cause}"):
            write()
        assert path.read_bytes() == before and no_temp_files(tmp_path)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_disk_limit_during_a_real_training_run(tmp_path, flags):
    """A real process whose files may not exceed 64 kB (the kernel refuses the write, as with a full
    disk): the checkpoint save fails with one line naming it; the earlier checkpoint stays whole."""
    run_dir = tmp_path / "run"
    assert train.main(as_argv(flags)) == 0
    before = (run_dir / "model.pt").read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    proc = run_module("train", *as_argv({**flags, "overwrite": True, "max_iters": 6}), preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model" in lines[0] and "File too large" in lines[0], lines[0]
    assert (run_dir / "model.pt").read_bytes() == before and no_temp_files(run_dir)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_disk_limit_while_tokenizing(tmp_path):
    """The same for `minlm tokenize`, whose ids go through an unnamed buffer file before the .npy."""
    _tokenizer().save(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "in.txt").write_text(TEXT * 300)  # ~600 kB of text, ~800 kB of uint16 ids
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "in.npy").write_bytes(b"the previous output")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = run_module("tokenize", "--inputs", str(tmp_path / "in.txt"),
                      "--vocab_path", str(tmp_path / "v.json"), "--merges_path", str(tmp_path / "m.txt"),
                      "--output_dir", str(tmp_path / "out"), "--no-progress", preexec_fn=limit)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "in.npy" in proc.stderr and "File too large" in proc.stderr
    assert (tmp_path / "out" / "in.npy").read_bytes() == b"the previous output"
    assert no_temp_files(tmp_path / "out")


@pytest.mark.parametrize("flag, value", [("checkpoint_path", "blocker/x.pt"), ("run_dir", "blocker"),
                                         ("run_dir", "blocker/sub"), ("checkpoint_path", "adir.pt")])
def test_train_output_through_a_file_or_onto_a_directory(tmp_path, flags, capsys, flag, value):
    (tmp_path / "blocker").write_text("a regular file")
    (tmp_path / "adir.pt").mkdir()
    assert train.main(as_argv({**flags, flag: str(tmp_path / value)})) == 2
    one_line_error(capsys, f"--{flag}", str(tmp_path / value.split("/")[0]))


def test_train_tokenizer_checks_its_output_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "blocker").write_text("a regular file")
    monkeypatch.setattr(train_tokenizer, "train_bpe", lambda *a, **k: pytest.fail("trained first"))
    for out in ("blocker", "blocker/sub"):
        assert train_tokenizer.main([str(tmp_path / "in.txt"), "--output_dir", str(tmp_path / out)]) == 2
        one_line_error(capsys, "--output_dir", "blocker", "not a directory")
    (tmp_path / "out" / "in_vocab.json").mkdir(parents=True)  # an output name taken by a directory
    assert train_tokenizer.main([str(tmp_path / "in.txt"), "--output_dir", str(tmp_path / "out")]) == 2
    one_line_error(capsys, "in_vocab.json", "is a directory")


def test_tokenize_import_and_export_outputs_through_a_file(tmp_path, capsys):
    """The same class for the other commands that write: one line, nothing written."""
    (tmp_path / "blocker").write_text("a regular file")
    tok = _tokenizer()
    tok.save(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "in.txt").write_text(TEXT)
    proc = run_module("tokenize", "--inputs", str(tmp_path / "in.txt"),
                      "--vocab_path", str(tmp_path / "v.json"), "--merges_path", str(tmp_path / "m.txt"),
                      "--output_dir", str(tmp_path / "blocker/sub"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "blocker is a file" in proc.stderr
    proc = run_module("import_hf", str(tmp_path), "--out", ".", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is a directory" in proc.stderr


def test_tokenizer_pair_is_one_unit(tmp_path, monkeypatch):
    """A failure while writing the second file leaves the old pair, not a new vocab beside old merges."""
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    _tokenizer(3).save(vocab, merges)
    old = vocab.read_bytes(), merges.read_bytes()
    _inject(monkeypatch, errno.ENOSPC, when=lambda name: "merges" in name)
    with pytest.raises(UserError, match="no space left"):
        _tokenizer(5).save(vocab, merges)
    assert (vocab.read_bytes(), merges.read_bytes()) == old and no_temp_files(tmp_path)


# ------------------------------------------------------------------------------ a mismatched tokenizer pair


@pytest.mark.parametrize("vocab_merges, merges_merges", [(5, 3), (3, 5), (5, 0)])
def test_from_files_refuses_a_pair_from_different_trainings(tmp_path, vocab_merges, merges_merges):
    _tokenizer(vocab_merges).save(tmp_path / "new_vocab.json", tmp_path / "new_merges.txt")
    _tokenizer(merges_merges).save(tmp_path / "old_vocab.json", tmp_path / "old_merges.txt")
    with pytest.raises(UserError, match="new_vocab.json and .*old_merges.txt do not belong together"):
        BPETokenizer.from_files(tmp_path / "new_vocab.json", tmp_path / "old_merges.txt", ["<|endoftext|>"])
    # the matching pair loads, and a special token (never made by a merge) is no mismatch
    loaded = BPETokenizer.from_files(tmp_path / "new_vocab.json", tmp_path / "new_merges.txt")
    assert loaded.encode("the cat") == _tokenizer(vocab_merges).encode("the cat")


# ------------------------------------------------------------------------------ killed writers


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    from NLM.min_lm.fileio import temp_path  # (imported here: new with issue 13, like directory_lock)

    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.pt.{dead_pid}.0a1b2c3d.tmp"
    stale.write_bytes(b"\0" * 1000)  # what SIGKILL mid-save leaves
    stale_dir = tmp_path / f".model.pt.{dead_pid}.0a1b2c3e.tmp"
    stale_dir.mkdir()
    live = temp_path(target)  # this process's: alive, must stay
    live.write_bytes(b"x")
    other = tmp_path / f".other.pt.{dead_pid}.0a1b2c3d.tmp"  # another output's: not ours to judge now
    other.write_bytes(b"x")
    atomic_write_text(target, "new")
    assert not stale.exists() and not stale_dir.exists() and live.exists() and other.exists()
    assert dead_pid != os.getpid() and target.read_text() == "new"


def test_sigkill_during_a_save_leaves_a_temp_file_that_the_next_run_removes(tmp_path, flags):
    run_dir = tmp_path / "run"
    code = ("import os, signal, torch; from NLM.min_lm import fileio\n"
            f"with fileio.atomic_path({str(run_dir / 'model.pt')!r}) as tmp:\n"
            "    open(tmp, 'wb').write(b'half a checkpoint')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -signal.SIGKILL
    assert not no_temp_files(run_dir)
    # removed at the start of the next run, even one that then stops before saving anything
    assert train.main(as_argv({**flags, "val_tokens": str(tmp_path / "missing.npy")})) == 2
    assert no_temp_files(run_dir)


# ------------------------------------------------------------------------------ two runs, one place


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_holder(tmp_path, flags, capsys):
    from NLM.min_lm.fileio import directory_lock

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from NLM.min_lm.fileio import directory_lock\n"
                               f"with directory_lock({str(run_dir)!r}):\n"
                               "    print('locked', flush=True); time.sleep(60)\n"],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert train.main(as_argv(flags)) == 2
        assert time.monotonic() - start < 30  # at once, not after training
        one_line_error(capsys, str(run_dir), f"process {holder.pid}")
        assert not (run_dir / "model.pt").exists()
        with pytest.raises(UserError, match=f"process {holder.pid}"), directory_lock(run_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
    with directory_lock(run_dir):  # released by the holder's death (even SIGKILL)
        pass
    assert not (run_dir / ".minlm.lock").exists()


def test_a_fresh_run_does_not_replace_an_earlier_run_without_overwrite(tmp_path, flags, capsys):
    run_dir = tmp_path / "run"
    assert train.main(as_argv(flags)) == 0
    best = (run_dir / "model_best.pt").read_bytes()
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert train.main(as_argv({**flags, "lr_max": 0.5, "seed": 3})) == 2
    one_line_error(capsys, "model.pt", "--resume", "--overwrite")
    assert (run_dir / "model_best.pt").read_bytes() == best
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert train.main(as_argv({**flags, "seed": 3, "overwrite": True})) == 0
    assert (run_dir / "metrics.jsonl").read_text() != metrics


# ------------------------------------------------------------------------------ export onto its inputs


def _export_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    pytest.importorskip("safetensors")
    model = TransformerLM(300, 16, 16, 1, 2, 32, 10000.0)
    save_checkpoint(model, None, 1, tmp_path / "model.pt")
    _tokenizer().save(tmp_path / "vocab.json", tmp_path / "merges.txt")
    return tmp_path / "model.pt", tmp_path / "vocab.json", tmp_path / "merges.txt"


@pytest.mark.parametrize("out", [".", "..", "sub/.."])
def test_export_force_never_replaces_a_directory_holding_its_inputs(tmp_path, out, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "sub").mkdir()
    inputs = _export_inputs(work)
    (work / "notes.txt").write_text("unrelated")
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="holds the input"):
        export_hf(*inputs, out, force=True)
    assert all(p.is_file() for p in inputs) and (work / "notes.txt").read_text() == "unrelated"


def test_export_force_replaces_only_an_earlier_export(tmp_path):
    inputs = _export_inputs(tmp_path)
    out = tmp_path / "hf"
    export_hf(*inputs, out)
    assert export_hf(*inputs, out, force=True) == out and json.loads((out / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="does not look like an earlier export"):
        export_hf(*inputs, other, force=True)
    assert (other / "thesis.tex").read_text() == "years of work"
    assert torch.load(inputs[0], weights_only=True)["iteration"] == 1


def test_atomic_path_names_a_directory_in_the_way(tmp_path):
    (tmp_path / "out.txt").mkdir()
    with pytest.raises(UserError, match="out.txt"), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "out.txt").is_dir() and no_temp_files(tmp_path)

"""--compile / --dtype auto on faked platforms; the tokens/s meter on a fake clock; the FLOPs formula."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_flags, write_tokens

from NLM.min_lm.training import TrainConfig, acceleration, throughput, train
from NLM.min_lm.transformer import ModelConfig, TransformerLM

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def linux_with_compiler(monkeypatch):
    """A Linux machine with g++ and Triton, whatever this one has."""
    monkeypatch.setattr(acceleration.platform, "system", lambda: "Linux")
    monkeypatch.setattr(acceleration.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(acceleration.importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("CXX", raising=False)


def test_auto_compiles_on_cuda_and_cpu(linux_with_compiler):
    assert acceleration.resolve_compile(None, CUDA) == (True, None)
    assert acceleration.resolve_compile(None, CPU) == (True, None)


@pytest.mark.parametrize("fake,device,reason", [
    ({}, MPS, "does not support MPS"),
    ({"system": "Windows"}, CPU, "Windows"),
    ({"which": None}, CPU, "needs a C++ compiler"),
    ({"find_spec": None}, CUDA, "needs Triton"),
])
def test_auto_falls_back_to_eager_with_one_line(linux_with_compiler, monkeypatch, fake, device, reason):
    if "system" in fake:
        monkeypatch.setattr(acceleration.platform, "system", lambda: fake["system"])
    if "which" in fake:
        monkeypatch.setattr(acceleration.shutil, "which", lambda name: None)
    if "find_spec" in fake:
        monkeypatch.setattr(acceleration.importlib.util, "find_spec", lambda name: None)
    use, note = acceleration.resolve_compile(None, device)
    assert not use and reason in note and "\n" not in note and note.startswith("note: running eagerly")
    assert acceleration.resolve_compile(True, device) == (True, None)  # an explicit flag is obeyed


def test_auto_dtype(monkeypatch, tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert acceleration.cpu_has_native_bf16(amx) and acceleration.cpu_has_native_bf16(arm)
    assert not acceleration.cpu_has_native_bf16(plain)
    assert not acceleration.cpu_has_native_bf16(tmp_path / "missing")  # not Linux: no /proc/cpuinfo

    for has_bf16, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda answer=has_bf16: answer)
        assert acceleration.resolve_dtype("auto", CPU) == expected
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda answer=has_bf16: answer)
        assert acceleration.resolve_dtype("auto", CUDA) == expected
    assert acceleration.resolve_dtype("auto", MPS) == "float32"
    assert acceleration.resolve_dtype("float32", CUDA) == "float32"


def test_the_trainer_says_when_auto_runs_eagerly(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(acceleration.shutil, "which", lambda name: None)
    monkeypatch.setattr(acceleration.platform, "system", lambda: "Linux")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: False)
    train_path, val_path = write_tokens(tmp_path), write_tokens(tmp_path, "v.npy")
    flags = tiny_flags(train_tokens=str(train_path), val_tokens=str(val_path),
                       checkpoint_path=str(tmp_path / "model.pt"), max_iters=2, quiet=False,
                       compile=None, dtype="auto")
    train(TrainConfig(**flags))
    out = capsys.readouterr().out
    assert out.count("note: running eagerly: torch.compile on the CPU needs a C++ compiler") == 1
    assert "(float32, eager)" in out


def test_defaults_are_auto():
    config = TrainConfig(train_tokens="t.npy", val_tokens="v.npy")
    assert config.compile is None and config.dtype == "auto"


def test_throughput_leaves_out_paused_time(monkeypatch):
    clock = iter([0.0, 10.0, 15.0, 20.0, 30.0]).__next__
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    meter = throughput.Throughput(CPU)  # start at 0
    meter.add(1000)
    with meter.paused():  # 10 .. 15: an evaluation
        pass
    meter.add(1000)
    assert meter.rate() == 2000 / (20 - 5)  # read at 20: 15 training seconds
    meter.add(500)
    assert meter.rate() == 500 / 10  # counting restarts at each read


def test_flops_per_token_by_hand():
    config = ModelConfig(vocab_size=100, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=32)
    model = TransformerLM.from_config(config, device="meta")
    n = model.num_parameters(exclude_embeddings=True) - 16 * (2 * 2 + 1)  # norm gains are not matmuls
    assert n == 2 * (4 * 16 * 16 + 3 * 16 * 32) + 100 * 16
    assert throughput.flops_per_token(config) == 6 * n + 6 * 2 * 8 * 16


def test_peak_flops_from_the_table_or_the_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert throughput.peak_flops(CUDA) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    assert throughput.peak_flops(CUDA) == 312e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some Future GPU")
    assert throughput.peak_flops(CUDA) is None
    assert throughput.peak_flops(CUDA, override_tflops=100.0) == 100e12
    assert throughput.peak_flops(CPU) is None

"""Training-step speed and memory of TransformerLM: attention paths x torch.compile, with a peer.

One training step = forward, cross-entropy loss, backward, AdamW step, zero_grad, on a fixed random
batch (data loading is not included). Each configuration runs in its own Python process so that its
memory and compile caches are its own. All are warmed up first (`--warmup` steps, which include
compilation); then on the CPU their `--steps` timed steps are interleaved, one step of each row in
turn, so that load from other processes hits every row alike. tokens/s = batch * context / median
step time; the best step is reported too.

CPU mode (default): vocab 10 000, context 256, d_model 256, 4 layers, 8 heads, d_ff 683, batch 8,
float32. Rows: attn_impl reference / sdpa, torch.compile off / on, plus a peer: Hugging Face
transformers' LlamaForCausalLM of the same shape (RMSNorm, RoPE, SwiGLU, no biases, untied head;
its own SDPA attention) trained with torch.optim.AdamW, eager. Ratios are against the peer.
Memory: "rss_after_warmup" is the resident set once weights, gradients buffers and optimizer
state exist; "step_peak_extra" is the peak resident set during the timed steps minus that (Linux
VmHWM, reset through /proc/self/clear_refs before the timed steps): activations and temporaries.

CUDA mode (`--cuda`): the GPT-2-small shape (vocab 50 304, context 1024, d_model 768, 12 layers,
12 heads, d_ff 2048), batch 16, bf16 autocast, sdpa, compiled and eager. Memory is
torch.cuda.max_memory_allocated over the timed steps (weights + optimizer state + activations).
MFU = achieved FLOP/s / peak FLOP/s, where the peak is measured in the same run as the best rate of
an 8192 x 8192 x 8192 bf16 matmul, and the FLOPs of one step are

    6 * N * B * T  +  6 * L * B * T^2 * d_model

N = parameters that take part in matmuls (all but the input embedding table, which is a lookup;
the untied lm_head counts). 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward). The attention
term counts Q K^T and (attention weights) V, 2 * T^2 * d_model FLOPs each per layer and sequence
in the forward pass, halved for causality (the fused kernels skip the masked half), x 3 for
forward + backward: 3 * (2 + 2) / 2 * T^2 * d_model = 6 T^2 d_model per layer.

    python benchmarks/bench_model.py [--steps 10] [--warmup 2]        # CPU, writes bench_model_cpu.json
    python benchmarks/bench_model.py --cuda                             # writes bench_model_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine_info

from NLM.min_lm.transformer import AdamW, TransformerLM, cross_entropy, param_groups

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CPU_SHAPE = dict(vocab_size=10_000, context_length=256, d_model=256, num_layers=4, num_heads=8, d_ff=683)
CUDA_SHAPE = dict(vocab_size=50_304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048)
CPU_ROWS = [
    dict(impl="ours", attn_impl="reference", compile=False),
    dict(impl="ours", attn_impl="sdpa", compile=False),
    dict(impl="ours", attn_impl="reference", compile=True),
    dict(impl="ours", attn_impl="sdpa", compile=True),
    dict(impl="hf_llama", attn_impl="sdpa", compile=False),
]
CUDA_ROWS = [
    dict(impl="ours", attn_impl="sdpa", compile=False),
    dict(impl="ours", attn_impl="sdpa", compile=True),
]


# ---------------------------------------------------------------------------------------------
# Machine and memory probes
# ---------------------------------------------------------------------------------------------




def proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# One configuration, run in a child process
# ---------------------------------------------------------------------------------------------


def build(row: dict, shape: dict, device: torch.device):
    """The model and optimizer of one row; returns (model, optimizer, loss_fn)."""
    torch.manual_seed(0)
    if row["impl"] == "ours":
        model = TransformerLM(**shape, device=device, attn_impl=row["attn_impl"])
        optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4, betas=(0.9, 0.95))
        forward = torch.compile(model) if row["compile"] else model
        return model, optimizer, lambda x, y: cross_entropy(forward(x), y)

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["d_model"],
        intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        max_position_embeddings=shape["context_length"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    forward = torch.compile(model) if row["compile"] else model

    def loss_fn(x, y):
        logits = forward(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    return model, optimizer, loss_fn


REPLY = "@@"  # marks the child's answers on stdout, apart from anything a library prints


def serve_row(row: dict, shape: dict, batch_size: int, warmup: int, cuda: bool) -> None:
    """Build one configuration and answer the parent's commands on stdin: warmup, step, finish."""
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")
    model, optimizer, loss_fn = build(row, shape, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, shape["vocab_size"], (2, batch_size, shape["context_length"]), generator=gen)
    x, y = tokens.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    result = dict(row, num_parameters=sum(p.numel() for p in model.parameters()))

    def step() -> float:
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # waits for the GPU

    def reply(answer: dict) -> None:
        print(REPLY + json.dumps(answer), flush=True)

    peak_reset = False
    for command in sys.stdin:
        command = command.strip()
        if command == "warmup":
            start = time.perf_counter()
            for _ in range(warmup):
                step()
            result["warmup_s"] = time.perf_counter() - start
            gc.collect()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                result["rss_after_warmup_mb"] = (proc_status_bytes("VmRSS") or 0) / 2**20
                peak_reset = reset_peak_rss()
            reply({})
        elif command == "step":
            start = time.perf_counter()
            result["final_loss"] = step()
            reply({"step_ms": 1000 * (time.perf_counter() - start)})
        elif command == "finish":
            if cuda:
                result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = proc_status_bytes("VmHWM")
                extra = peak / 2**20 - result["rss_after_warmup_mb"] if peak_reset and peak else None
                result["step_peak_extra_mb"] = extra
            reply(result)
            return


class Child:
    """One configuration living in its own process, driven one command at a time."""

    def __init__(self, row: dict, args: argparse.Namespace):
        self.row = row
        command = [sys.executable, __file__, "--child", json.dumps(row), "--warmup", str(args.warmup)]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            command + (["--cuda"] if args.cuda else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        self.stderr.seek(0)
        raise SystemExit(f"error: {label(self.row)} failed:\n{self.stderr.read()[-3000:]}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.stderr.close()


# ---------------------------------------------------------------------------------------------
# The parent: run every row in a fresh process, measure the matmul peak, print and save
# ---------------------------------------------------------------------------------------------


def measured_bf16_peak_flops(n: int = 8192, repeats: int = 10) -> float:
    """The best FLOP/s of an n^3 bf16 matmul on this GPU (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()  # give the memory back before the training runs
    return 2 * n**3 / best


def step_flops(shape: dict, batch_size: int, num_matmul_params: int) -> float:
    """6 N B T + 6 L B T^2 d_model (see the module docstring)."""
    T, L, d = shape["context_length"], shape["num_layers"], shape["d_model"]
    return 6 * num_matmul_params * batch_size * T + 6 * L * batch_size * T**2 * d


def run_rows(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Warm every row up, then time `args.steps` steps per row; returns each row's results.

    On the CPU all rows stay alive and their timed steps are interleaved (row 1 step, row 2 step,
    ...), so that load from other processes on the machine hits every row alike. On a GPU the rows
    run one after another, so that only one holds GPU memory at a time.
    """
    if args.cuda:
        groups = [[row] for row in rows]
    else:
        groups = [rows]
    results = []
    for group in groups:
        children = [Child(row, args) for row in group]
        for child in children:
            print(f"warming up {label(child.row)} ...", file=sys.stderr, flush=True)
            child.ask("warmup")
        times: list[list[float]] = [[] for _ in children]
        for _ in range(args.steps):
            for child, row_times in zip(children, times, strict=True):
                row_times.append(child.ask("step")["step_ms"])
        for child, row_times in zip(children, times, strict=True):
            result = child.ask("finish")
            child.close()
            result["step_ms_all"] = row_times
            result["step_ms"] = statistics.median(row_times)
            result["step_ms_best"] = min(row_times)
            results.append(result)
    return results


def label(row: dict) -> str:
    name = "min_lm" if row["impl"] == "ours" else "HF Llama (peer)"
    return f"{name} attn={row['attn_impl']} compile={'on' if row['compile'] else 'off'}"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--cuda", action="store_true", help="GPT-2-small shape on a CUDA GPU, bf16 autocast")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2 CPU, 5 CUDA)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("error: --cuda needs a CUDA GPU, and torch.cuda.is_available() is False here")
    args.steps = args.steps or (20 if args.cuda else 10)
    args.warmup = args.warmup or (5 if args.cuda else 2)
    shape, batch_size = (CUDA_SHAPE, 16) if args.cuda else (CPU_SHAPE, 8)

    if args.child:
        serve_row(json.loads(args.child), shape, batch_size, args.warmup, args.cuda)
        return

    info = machine_info("cuda" if args.cuda else "cpu")
    info["load_average_before"] = os.getloadavg()
    peak = measured_bf16_peak_flops() if args.cuda else None
    rows = run_rows(CUDA_ROWS if args.cuda else CPU_ROWS, args)
    info["load_average_after"] = os.getloadavg()

    matmul_params = TransformerLM(**shape, device="meta").num_parameters(exclude_embeddings=True)
    flops = step_flops(shape, batch_size, matmul_params)
    for r in rows:
        r["tokens_per_s"] = batch_size * shape["context_length"] / (r["step_ms"] / 1000)
    baseline = rows[-1]["tokens_per_s"]  # CPU: the peer; CUDA: ours compiled
    for r in rows:
        r["vs_last_row"] = r["tokens_per_s"] / baseline
        r["achieved_tflops"] = flops / (r["step_ms"] / 1000) / 1e12
        if peak:
            r["mfu"] = r["achieved_tflops"] * 1e12 / peak

    memory_key = "peak_memory_mb" if args.cuda else "step_peak_extra_mb"
    header = (
        f"{'configuration':44} {'tokens/s':>9} {'median ms':>9} {'best ms':>8} {'TFLOP/s':>8} {'ratio':>6}"
    )
    header += f" {'mem MB':>7}"
    print(header + (f" {'MFU':>6}" if peak else f" {'warm RSS':>9}"))
    for r in rows:
        memory = r[memory_key]
        line = f"{label(r):44} {r['tokens_per_s']:9.0f} {r['step_ms']:9.1f} {r['step_ms_best']:8.1f}"
        line += f" {r['achieved_tflops']:8.3f} {r['vs_last_row']:6.2f}"
        line += f" {memory if memory is not None else float('nan'):7.1f}"
        print(line + (f" {r['mfu']:6.1%}" if peak else f" {r['rss_after_warmup_mb']:9.1f}"))

    result = dict(
        benchmark="bench_model",
        mode="cuda" if args.cuda else "cpu",
        machine=info,
        shape=shape,
        batch_size=batch_size,
        dtype="bf16 autocast" if args.cuda else "float32",
        steps=args.steps,
        warmup=args.warmup,
        flops_per_step=flops,
        flops_formula="6*N*B*T + 6*L*B*T^2*d_model, N = parameters except the input embedding",
        matmul_params=matmul_params,
        measured_bf16_matmul_peak_tflops=peak / 1e12 if peak else None,
        memory_metric=(
            "torch.cuda.max_memory_allocated over the timed steps"
            if args.cuda
            else "step_peak_extra_mb = VmHWM during timed steps - VmRSS before them (after warm-up)"
        ),
        ratio="tokens/s divided by the last row's",
        timing="tokens/s from the median step time; CPU rows' timed steps interleaved",
        rows=rows,
    )
    out = RESULTS_DIR / f"bench_model_{'cuda' if args.cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Training-step speed and memory of min_lm against Hugging Face's GPT-2 (nanoGPT's architecture).

One training step = forward, loss, backward, gradient clipping to norm 1, AdamW step, zero_grad, on a fixed
random batch (data loading is not included). Each row runs in its own Python process so that its memory and
compile caches are its own. All are warmed up first (`--warmup` steps, which include compilation); then on
the CPU their timed steps are interleaved, one step of each row in turn, so that load from other processes
hits every row alike. tokens/s = batch * context / median step time.

Rows, each "the way a user runs it":
- min_lm default: what `minlm train` does with its defaults on this CPU in float32: compiled (model and
  fused loss together), sdpa attention, fused AdamW, foreach clipping. (--dtype is pinned to float32 here so
  that both sides compute alike; `--dtype auto` would pick bfloat16 on CPUs with native bf16.)
- min_lm eager: the same without torch.compile.
- HF GPT-2: transformers' GPT2LMHeadModel (LayerNorm, GELU MLP, learned positions, biases) with the head
  untied so its weight count matches ours, its default (sdpa) attention, `model(input_ids, labels=...)`
  for the loss, torch.optim.AdamW with its defaults and clip_grad_norm_: eager, as transformers runs by
  default.

Sizes (CPU): "d256" vocab 10 000, context 256, d_model 256, 4 layers, batch 8 on all threads; "d128_1thread"
the same at d_model 128 on one thread; "d768" d_model 768, 12 layers (fewer steps). "memory": vocab 50 257,
context 512, d_model 256, 2 layers, batch 8: the peak resident set of the process during the timed steps
(Linux VmHWM, reset through /proc/self/clear_refs after warm-up), i.e. weights, optimizer state,
activations, logits and every temporary of a step.

CUDA mode (`--cuda`): the GPT-2-small shape (vocab 50 304, context 1024, d_model 768, 12 layers, 12 heads,
d_ff 2048), batch 16, bf16 autocast, min_lm compiled and eager. Memory is torch.cuda.max_memory_allocated.
MFU = achieved FLOP/s / peak FLOP/s against both the spec-sheet bf16 peak (training/throughput.py's table)
and the best rate of an 8192^3 bf16 matmul measured in the same run. FLOPs of one step (throughput.py):

    6 * N * B * T  +  6 * L * B * T^2 * d_model

    python benchmarks/bench_model.py [--sizes d256 d128_1thread d768 memory]   # CPU: bench_model_cpu.json
                                            (a run replaces the tables of its sizes and keeps the others)
    python benchmarks/bench_model.py --cuda                                    # bench_model_cuda.json
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
from machine import machine_info

from NLM.min_lm.training.acceleration import resolve_compile
from NLM.min_lm.training.config import default_d_ff
from NLM.min_lm.training.throughput import flops_per_token, peak_flops
from NLM.min_lm.transformer import AdamW, ModelConfig, TransformerLM, gradient_clipping, param_groups

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def shape(vocab: int, context: int, d_model: int, layers: int) -> dict:
    return dict(vocab_size=vocab, context_length=context, d_model=d_model, num_layers=layers,
                num_heads=d_model // 64 if d_model >= 512 else d_model // 32, d_ff=default_d_ff(d_model))


CPU_SIZES = {
    "d256": dict(shape=shape(10_000, 256, 256, 4), batch=8, threads=None, steps=10, warmup=2),
    "d128_1thread": dict(shape=shape(10_000, 256, 128, 4), batch=8, threads=1, steps=10, warmup=2),
    "d768": dict(shape=shape(10_000, 256, 768, 12), batch=8, threads=None, steps=3, warmup=1),
    "memory": dict(shape=shape(50_257, 512, 256, 2), batch=8, threads=None, steps=2, warmup=1),
}
CUDA_SIZE = dict(shape=dict(vocab_size=50_304, context_length=1024, d_model=768, num_layers=12, num_heads=12,
                            d_ff=2048), batch=16, threads=None, steps=20, warmup=5)
CPU_ROWS = [dict(impl="min_lm", compile="auto"), dict(impl="min_lm", compile=False),
            dict(impl="hf_gpt2", compile=False)]
CUDA_ROWS = [dict(impl="min_lm", compile=False), dict(impl="min_lm", compile="auto")]


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
    """The model of one row and its training step (a function of x, y returning the loss tensor)."""
    torch.manual_seed(0)
    if row["impl"] == "min_lm":
        model = TransformerLM.from_config(ModelConfig(**shape), device=device)
        optimizer = AdamW(param_groups(model, weight_decay=0.1), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        use_compile = row["compile"] if row["compile"] != "auto" else resolve_compile(None, device)[0]
        forward = torch.compile(model) if use_compile else model

        def step(x, y):
            loss = forward(x, targets=y)
            loss.backward()
            gradient_clipping(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        return model, step

    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["context_length"],
                        n_embd=shape["d_model"], n_layer=shape["num_layers"], n_head=shape["num_heads"],
                        tie_word_embeddings=False)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(x, y):
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, step


REPLY = "@@"  # marks the child's answers on stdout, apart from anything a library prints


def serve_row(row: dict, size: dict, cuda: bool) -> None:
    """Build one configuration and answer the parent's commands on stdin: warmup, step, finish."""
    device = torch.device("cuda" if cuda else "cpu")
    if size["threads"]:
        torch.set_num_threads(size["threads"])
    if cuda:
        torch.set_float32_matmul_precision("high")
    shape = size["shape"]
    model, train_step = build(row, shape, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, shape["vocab_size"], (2, size["batch"], shape["context_length"]), generator=gen)
    x, y = tokens.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    result = dict(row, num_parameters=sum(p.numel() for p in model.parameters()))

    def step() -> float:
        with autocast:
            return train_step(x, y).item()  # waits for the device

    def reply(answer: dict) -> None:
        print(REPLY + json.dumps(answer), flush=True)

    peak_reset = False
    for command in sys.stdin:
        command = command.strip()
        if command == "warmup":
            start = time.perf_counter()
            for _ in range(size["warmup"]):
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
                result["step_peak_rss_mb"] = peak / 2**20 if peak_reset and peak else None
            reply(result)
            return


class Child:
    """One configuration living in its own process, driven one command at a time."""

    def __init__(self, row: dict, size_name: str, cuda: bool):
        self.row = row
        command = [sys.executable, __file__, "--child", json.dumps(row), "--sizes", size_name]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            command + (["--cuda"] if cuda else []),
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


def run_rows(rows: list[dict], size_name: str, size: dict, cuda: bool) -> list[dict]:
    """Warm every row up, then time `steps` steps per row; returns each row's results.

    On the CPU all rows stay alive and their timed steps are interleaved (row 1 step, row 2 step, ...),
    so that load from other processes on the machine hits every row alike. On a GPU the rows run one
    after another, so that only one holds GPU memory at a time.
    """
    groups = [[row] for row in rows] if cuda else [rows]
    results = []
    for group in groups:
        children = [Child(row, size_name, cuda) for row in group]
        for child in children:
            print(f"{size_name}: warming up {label(child.row)} ...", file=sys.stderr, flush=True)
            child.ask("warmup")
        times: list[list[float]] = [[] for _ in children]
        for _ in range(size["steps"]):
            for child, row_times in zip(children, times, strict=True):
                row_times.append(child.ask("step")["step_ms"])
        for child, row_times in zip(children, times, strict=True):
            result = child.ask("finish")
            child.close()
            result["step_ms_all"] = row_times
            result["step_ms"] = statistics.median(row_times)
            results.append(result)
    return results


def label(row: dict) -> str:
    if row["impl"] == "hf_gpt2":
        return "HF GPT2LMHeadModel (eager)"
    return "min_lm default (compiled)" if row["compile"] == "auto" else "min_lm eager"


def measure_size(size_name: str, size: dict, cuda: bool) -> dict:
    """One table: every row at one size, with ratios to the HF row (CPU) or to min_lm eager (CUDA)."""
    shape, batch = size["shape"], size["batch"]
    peak_spec = peak_flops(torch.device("cuda")) if cuda else None
    peak_measured = measured_bf16_peak_flops() if cuda else None
    load_before = os.getloadavg()
    rows = run_rows(CUDA_ROWS if cuda else CPU_ROWS, size_name, size, cuda)
    flops = flops_per_token(ModelConfig(**shape)) * batch * shape["context_length"]
    for r in rows:
        r["label"] = label(r)
        r["tokens_per_s"] = batch * shape["context_length"] / (r["step_ms"] / 1000)
        r["achieved_tflops"] = flops / (r["step_ms"] / 1000) / 1e12
        if peak_spec:
            r["mfu_spec_peak"] = r["achieved_tflops"] * 1e12 / peak_spec
        if peak_measured:
            r["mfu_measured_peak"] = r["achieved_tflops"] * 1e12 / peak_measured
    base = rows[-1] if not cuda else rows[0]
    for r in rows:
        r["speed_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        if not cuda and r.get("step_peak_rss_mb") and base.get("step_peak_rss_mb"):
            r["peak_rss_ratio"] = r["step_peak_rss_mb"] / base["step_peak_rss_mb"]
    threads = size["threads"] or torch.get_num_threads()
    return dict(size=size_name, shape=shape, batch_size=batch, threads=threads,
                steps=size["steps"], warmup=size["warmup"], flops_per_step=flops,
                spec_bf16_peak_tflops=peak_spec / 1e12 if peak_spec else None,
                measured_bf16_matmul_peak_tflops=peak_measured / 1e12 if peak_measured else None,
                load_average_before=load_before, load_average_after=os.getloadavg(),
                ratios_against=base["label"], rows=rows)


def print_table(table: dict, cuda: bool) -> None:
    print(f"\n{table['size']}: {table['shape']}, batch {table['batch_size']}, {table['threads']} thread(s), "
          f"load {table['load_average_before'][0]:.1f} -> {table['load_average_after'][0]:.1f}")
    memory = "peak MB" if cuda else "step RSS MB"
    print(f"{'row':30} {'weights':>10} {'tokens/s':>9} {'median ms':>10} {'speed':>6} {memory:>12} {'mem':>5}"
          + (f" {'MFU spec':>8} {'MFU meas':>8}" if cuda else ""))
    for r in table["rows"]:
        nan = float("nan")
        mem = (r.get("peak_memory_mb") if cuda else r.get("step_peak_rss_mb")) or nan
        line = (f"{r['label']:30} {r['num_parameters']:>10,} {r['tokens_per_s']:9.0f} {r['step_ms']:10.1f} "
                f"{r['speed_ratio']:6.2f} {mem:12.0f} {r.get('peak_rss_ratio', nan):5.2f}")
        if cuda:
            line += f" {r.get('mfu_spec_peak', nan):8.1%} {r.get('mfu_measured_peak', nan):8.1%}"
        print(line)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--cuda", action="store_true", help="GPT-2-small shape on a CUDA GPU, bf16 autocast")
    parser.add_argument("--sizes", nargs="+", default=list(CPU_SIZES), choices=list(CPU_SIZES),
                        help="CPU sizes to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("error: --cuda needs a CUDA GPU, and torch.cuda.is_available() is False here")

    if args.child:
        size = CUDA_SIZE if args.cuda else CPU_SIZES[args.sizes[0]]
        serve_row(json.loads(args.child), size, args.cuda)
        return

    sizes = {"gpt2_small": CUDA_SIZE} if args.cuda else {name: CPU_SIZES[name] for name in args.sizes}
    info = machine_info("cuda" if args.cuda else "cpu")
    tables = []
    for name, size in sizes.items():
        tables.append({**measure_size(name, size, args.cuda), "machine": info})
        print_table(tables[-1], args.cuda)

    result = dict(
        benchmark="bench_model",
        mode="cuda" if args.cuda else "cpu",
        machine=info,  # of this run; each table has its own "machine" too
        dtype="bf16 autocast" if args.cuda else "float32",
        flops_formula="6*N*B*T + 6*L*B*T^2*d_model, N = matmul weights (all but the input embedding)",
        memory_metric=("torch.cuda.max_memory_allocated over the timed steps" if args.cuda
                       else "step_peak_rss_mb = VmHWM of the row's process during the timed steps"),
        ratio=("speed: tokens/s / the ratios_against row's; mem: step peak RSS / that row's"),
        timing="tokens/s from the median step time; CPU rows' timed steps interleaved",
        tables=tables,
    )
    out = RESULTS_DIR / f"bench_model_{'cuda' if args.cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the tables of sizes not run this time (each records its own machine and load)
        measured = {table["size"] for table in tables}
        previous = json.loads(out.read_text())
        earlier = [{"machine": previous.get("machine"), **t} for t in previous.get("tables", [])]
        result["tables"] = [t for t in earlier if t["size"] not in measured] + tables
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

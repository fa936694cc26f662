"""Decoding speed: min_lm's `generate` with the KV cache vs full recompute, and Hugging Face as a peer.

All three decode the same number of new tokens greedily from the same random prompt with a model of
the same shape (pre-norm RMSNorm, RoPE, SwiGLU, no biases: a Llama-shaped model, so the peer is
transformers' LlamaForCausalLM with its own KV cache). Each is warmed up once, then the rows are timed
in `--repeats` interleaved rounds (one run of each row per round, so load from other processes hits all
alike); the best time counts. `--compile_step` adds generate(compile_step=True): the fixed-size cache with
a compiled one-token step (reduce-overhead CUDA graphs on a GPU; its compilation is in the warm-up).
Prints a table and writes benchmarks/results/bench_generate.json.

    python benchmarks/bench_generate.py [--device cuda] [--new_tokens 256] [--compile_step]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import machine_info

from NLM.min_lm.transformer import TransformerLM
from NLM.min_lm.transformer.sampling import generate

RESULTS = Path(__file__).resolve().parent / "results" / "bench_generate.json"




def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def best_times(runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str
               ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Warm each run up, then time them in `repeats` interleaved rounds; the best time of each, its output."""
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up: allocator, kernels, lazy inits, compiling
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            outputs[name] = fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def hf_peer(model: TransformerLM, device: str):
    """A LlamaForCausalLM of the same shape, or None where transformers is not installed."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_heads,
        max_position_embeddings=c.context_length,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab_size", type=int, default=10000)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--d_ff", type=int, default=704)
    parser.add_argument("--context_length", type=int, default=512)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile_step", action="store_true", help="also time generate(compile_step=True)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    torch.manual_seed(0)
    device = args.device
    model = TransformerLM(
        args.vocab_size, args.context_length, args.d_model, args.num_layers, args.num_heads, args.d_ff,
        device=device,
    ).eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_tokens), device=device)
    n = args.new_tokens

    runs = {
        "min_lm generate, KV cache": lambda: generate(model, prompt, n, temperature=0),
        "min_lm generate, full recompute": lambda: generate(model, prompt, n, temperature=0, use_cache=False),
    }
    if args.compile_step:
        runs["min_lm generate, fixed-size cache, compiled step"] = (
            lambda: generate(model, prompt, n, temperature=0, compile_step=True))
    peer = hf_peer(model, device)
    if peer is not None:
        import transformers

        def run_peer() -> torch.Tensor:
            with torch.inference_mode():
                return peer.generate(
                    prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                    eos_token_id=None, pad_token_id=0,
                )

        runs[f"transformers {transformers.__version__} LlamaForCausalLM.generate, KV cache"] = run_peer
    load_before = os.getloadavg()
    times, outputs = best_times(runs, args.repeats, device)
    rows = list(times.items())
    cached_s, full_s = times["min_lm generate, KV cache"], times["min_lm generate, full recompute"]
    same_tokens = all(torch.equal(outputs["min_lm generate, full recompute"], outputs[name])
                      for name in runs if name.startswith("min_lm"))

    print(f"{n} new tokens after a {args.prompt_tokens}-token prompt, greedy, batch 1, {device}; "
          f"model d_model={args.d_model} layers={args.num_layers} heads={args.num_heads} "
          f"ctx={args.context_length} vocab={args.vocab_size} ({model.num_parameters() / 1e6:.1f}M params)")
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}}  {'seconds':>8}  {'tokens/s':>9}  {'vs cache':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.3f}  {n / seconds:9.1f}  {seconds / cached_s:7.2f}x")
    print(f"speed-up of the KV cache over full recompute: {full_s / cached_s:.1f}x "
          f"(same tokens: {same_tokens})")

    result = {
        "benchmark": "bench_generate",
        "machine": machine_info(device),
        "config": {k: v for k, v in vars(args).items() if k != "out"}
        | {"parameters": model.num_parameters()},
        "results": [{"name": name, "seconds": s, "tokens_per_s": n / s} for name, s in rows],
        "cache_speedup_over_full_recompute": full_s / cached_s,
        "cache_and_full_recompute_give_the_same_tokens": same_tokens,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "timing": "best of --repeats interleaved rounds after one warm-up run each",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

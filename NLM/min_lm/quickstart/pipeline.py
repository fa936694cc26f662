"""The quickstart's five stages, each the library function behind one of the other commands.

`run_quickstart(config)` leaves in `config.out_dir` exactly what running the commands by hand would make
(see `NLM.min_lm.scripts.quickstart` for the list of files), prints the samples and a summary, and
returns the summary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from NLM.min_lm.corpus import Corpus, build_corpus, stdlib_root, stdlib_sources, unigram_entropy
from NLM.min_lm.device import resolve_device
from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_write_text
from NLM.min_lm.generation import sample_texts
from NLM.min_lm.quickstart.config import QuickstartConfig
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer, encode_files, train_bpe
from NLM.min_lm.training import TrainConfig, train
from NLM.min_lm.transformer import TransformerLM, load_model


def stage(number: int, title: str, config: QuickstartConfig) -> None:
    if config.progress:
        print(f"\n[{number}/5] {title}", flush=True)


def make_corpus(config: QuickstartConfig, out_dir: Path) -> tuple[Corpus, str]:
    """Stage 1: train.txt and valid.txt from --data or the standard library; and where they came from."""
    if config.data:
        paths = [Path(p) for p in config.data]
        for path in paths:
            if not path.is_file():
                raise UserError(f"--data: {path}: no such file")
        corpus = build_corpus(paths, out_dir, config.max_bytes, skip_undecodable=False,
                              progress=config.progress)
        return corpus, f"{len(paths)} file(s) from --data"
    paths = stdlib_sources(config.include_tests, seed=config.seed)
    corpus = build_corpus(paths, out_dir, config.max_bytes, skip_undecodable=True, progress=config.progress)
    return corpus, f"Python standard library source, {corpus.num_documents} files from {stdlib_root()}"


def make_tokenizer(config: QuickstartConfig, corpus: Corpus,
                   out_dir: Path) -> tuple[BPETokenizer, Path, Path]:
    """Stage 2: a byte-level BPE tokenizer trained on train.txt; train_vocab.json and train_merges.txt."""
    vocab, merges = train_bpe(corpus.train_path, config.vocab_size, [END_OF_TEXT], verbose=config.progress)
    tokenizer = BPETokenizer(vocab, merges, [END_OF_TEXT])
    vocab_path, merges_path = out_dir / "train_vocab.json", out_dir / "train_merges.txt"
    tokenizer.save(vocab_path, merges_path)
    if config.progress:
        print(f"{len(vocab)} tokens ({len(merges)} merges); wrote {vocab_path} and {merges_path}")
    return tokenizer, vocab_path, merges_path


def make_token_ids(config: QuickstartConfig, corpus: Corpus, tokenizer: BPETokenizer, out_dir: Path) -> None:
    """Stage 3: train.npy and valid.npy."""
    workers = 1 if config.tiny else min(4, os.cpu_count() or 1)  # for a tiny corpus a pool costs more
    inputs, outputs = [corpus.train_path, corpus.valid_path], [out_dir / "train.npy", out_dir / "valid.npy"]
    results = encode_files.encode_files(tokenizer, inputs, outputs, workers, config.progress)
    if config.progress:
        print(encode_files.format_summary(results))


def train_config(config: QuickstartConfig, vocab_size: int, out_dir: Path) -> TrainConfig:
    """Stage 4's settings: warmup 5% of the run, cosine decay to lr_max / 10, one checkpoint at the end.
    A run of fixed length validates 10 times; a time-budgeted one, whose length in iterations is unknown
    beforehand, every 100 iterations (about 7 times in the default 5 minutes on 2 CPU cores)."""
    iters = config.max_iters
    return TrainConfig(
        train_tokens=str(out_dir / "train.npy"), val_tokens=str(out_dir / "valid.npy"), vocab_size=vocab_size,
        context_length=config.context_length, batch_size=config.batch_size, d_model=config.d_model,
        num_layers=config.num_layers, num_heads=config.num_heads, lr_max=config.lr_max,
        lr_min=config.lr_max / 10, warmup_iters=max(1, iters // 20), max_iters=iters,
        max_minutes=config.minutes or None, eval_interval=100 if config.minutes else max(1, iters // 10),
        eval_iters=10, checkpoint_interval=iters, seed=config.seed, checkpoint_path=str(out_dir / "model.pt"),
        overwrite=True,  # a rerun replaces the whole pipeline
        recipe=config.recipe, device=config.device, quiet=not config.progress,
        # --tiny trains for seconds: compiling, or bf16 casts around its tiny matmuls, would not pay
        compile=False if config.tiny else None, dtype="float32" if config.tiny else "auto")


def make_samples(config: QuickstartConfig, model: TransformerLM, tokenizer: BPETokenizer) -> list[str]:
    """Stage 5: `num_samples` continuations of <|endoftext|> + prompt, generated as one batch."""
    prompt_ids = tokenizer.encode(END_OF_TEXT) + tokenizer.encode(config.prompt)
    with tqdm(total=config.sample_tokens, unit="tok", desc="sampling", disable=not config.progress) as bar:
        return sample_texts(model, tokenizer, config.prompt, config.num_samples, config.sample_tokens,
                            config.temperature, config.top_p, seed=config.seed, prompt_ids=prompt_ids,
                            on_token=lambda _: bar.update())


def run_quickstart(config: QuickstartConfig) -> dict:
    """Run the five stages; print the samples and a summary; return the summary (also in summary.json)."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} exists and is not a directory")
    train_config(config, config.vocab_size, out_dir)  # a bad model flag fails now, not after stage 3
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def clock(name: str) -> None:
        seconds[name] = time.perf_counter() - start - sum(seconds.values())

    stage(1, "corpus", config)
    corpus, source = make_corpus(config, out_dir)
    clock("corpus")
    stage(2, f"tokenizer: byte-level BPE with {config.vocab_size} tokens", config)
    tokenizer, vocab_path, merges_path = make_tokenizer(config, corpus, out_dir)
    clock("tokenizer")
    stage(3, "tokenize", config)
    make_token_ids(config, corpus, tokenizer, out_dir)
    clock("tokenize")
    stage(4, "train", config)
    result = train(train_config(config, len(tokenizer), out_dir))
    clock("train")
    stage(5, "samples", config)
    checkpoint = result.best_checkpoint_path or result.checkpoint_path
    model, _ = load_model(checkpoint, device=resolve_device(config.device))
    samples = make_samples(config, model, tokenizer)
    samples_text = "".join(f"--- sample {i} of {len(samples)} (temperature {config.temperature}, "
                           f"top_p {config.top_p}) ---\n{text}\n" for i, text in enumerate(samples, 1))
    atomic_write_text(out_dir / "samples.txt", samples_text)
    clock("samples")
    seconds["total"] = time.perf_counter() - start

    valid_ids = np.load(out_dir / "valid.npy", mmap_mode="r")
    summary = {
        "corpus": source,
        "train_bytes": corpus.train_bytes,
        "valid_bytes": corpus.valid_bytes,
        "train_tokens": int(np.load(out_dir / "train.npy", mmap_mode="r").shape[0]),
        "valid_tokens": int(valid_ids.shape[0]),
        "vocab_size": len(tokenizer),
        "model_config": dataclasses.asdict(model.config),
        "parameters": model.num_parameters(),
        "iterations": result.iterations,
        "time_budget_minutes": config.minutes or None,
        "train_seconds": result.elapsed,
        "tokens_seen": result.tokens_seen,
        "train_tokens_per_s": result.tokens_seen / result.elapsed,
        "best_val_loss": result.best_val_loss,
        "final_val_loss": result.final_val_loss,
        "valid_unigram_entropy": unigram_entropy(valid_ids),
        "seconds": seconds,
        "files": {"checkpoint": str(checkpoint), "vocab": str(vocab_path), "merges": str(merges_path)},
    }
    # nats per token -> bits per byte: comparable across tokenizers
    summary["best_val_bits_per_byte"] = (result.best_val_loss * summary["valid_tokens"]
                                         / (corpus.valid_bytes * math.log(2)))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\n{samples_text}\n{format_summary(summary, out_dir)}")
    return summary


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def format_summary(s: dict, out_dir: Path) -> str:
    c = s["model_config"]
    stages = ", ".join(f"{name} {_duration(t)}" for name, t in s["seconds"].items() if name != "total")
    budget = f", time budget {s['time_budget_minutes']:g} min" if s["time_budget_minutes"] else ""
    rows = [
        ("corpus", f"{s['corpus']}: {s['train_bytes'] / 1e6:.2f} MB train, "
                   f"{s['valid_bytes'] / 1e6:.2f} MB valid"),
        ("tokens", f"{s['train_tokens']:,} train, {s['valid_tokens']:,} valid "
                   f"({s['train_bytes'] / s['train_tokens']:.2f} bytes/token, vocab {s['vocab_size']:,})"),
        ("model", f"{s['parameters'] / 1e6:.2f}M parameters: d_model {c['d_model']}, "
                  f"{c['num_layers']} layers, {c['num_heads']} heads, context {c['context_length']}"),
        ("training", f"{s['iterations']:,} iterations, {s['tokens_seen']:,} tokens seen, "
                     f"{s['train_tokens_per_s']:,.0f} tokens/s{budget}"),
        ("val loss", f"{s['best_val_loss']:.3f} nats/token (best), {s['final_val_loss']:.3f} (final); "
                     f"{s['best_val_bits_per_byte']:.3f} bits/byte"),
        ("unigram entropy", f"{s['valid_unigram_entropy']:.3f} nats/token (of the validation tokens: "
                            f"the best loss without context)"),
        ("time", f"{_duration(s['seconds']['total'])} ({stages})"),
    ]
    width = max(len(name) for name, _ in rows)
    f = s["files"]
    return "\n".join(
        [f"quickstart done; everything is in {out_dir}/"]
        + [f"  {name:<{width}}  {value}" for name, value in rows]
        + ["next:", f"  minlm generate --checkpoint {f['checkpoint']} --vocab_path {f['vocab']} "
                    f"--merges_path {f['merges']} --prompt 'def parse(' --temperature 0.8 --top_p 0.95"]
    )

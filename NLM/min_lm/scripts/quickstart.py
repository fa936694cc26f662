"""The whole pipeline in one command, offline: corpus -> tokenizer -> token ids -> model -> samples.

    minlm quickstart                  # the default run: ~6 minutes on 2 CPU cores
    minlm quickstart --tiny           # ~10 seconds: a tiny corpus and model, every stage once
    minlm quickstart --data a.txt     # your own UTF-8 text instead of the built-in corpus

The built-in corpus is the Python standard library's own source code, read from this Python's
installation (nothing is downloaded). Each stage calls the library function behind one of the other
commands, so --out_dir ends up holding exactly what running them by hand would make:

    train.txt, valid.txt                 the corpus, documents joined by <|endoftext|>, ~5% held out
    train_vocab.json, train_merges.txt   the tokenizer        (minlm train-tokenizer)
    train.npy, valid.npy                 the token ids        (minlm tokenize)
    model.pt, model_best.pt              the checkpoints      (minlm train)
    metrics.jsonl, loss.png              the training curves
    samples.txt                          text sampled from the best checkpoint (minlm generate)
    summary.json                         the numbers printed at the end

--tiny picks smaller defaults for every size flag; a size flag given explicitly still wins.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from NLM.min_lm.corpus import EOS, Corpus, build_corpus, stdlib_root, stdlib_sources, unigram_entropy
from NLM.min_lm.distributed import DistContext, resolve_device
from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_write_text
from NLM.min_lm.scripts import tokenize, train_tokenizer
from NLM.min_lm.scripts.args import arg, parse_config, run_cli
from NLM.min_lm.tokenization import BPETokenizer
from NLM.min_lm.training import TrainConfig, train
from NLM.min_lm.transformer import TransformerLM, load_model
from NLM.min_lm.transformer.sampling import generate


@dataclass(frozen=True)
class Preset:
    """The sizes of a run; every one of them can be overridden by its flag."""

    max_bytes: int
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    batch_size: int
    max_iters: int
    lr_max: float
    sample_tokens: int


# Tuned on 2 CPU cores for the best validation loss within the time budget (see the README).
DEFAULT = Preset(max_bytes=12_000_000, vocab_size=4096, context_length=256, d_model=128, num_layers=4,
                 num_heads=4, batch_size=16, max_iters=800, lr_max=5e-3, sample_tokens=200)
TINY = Preset(max_bytes=300_000, vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4,
              batch_size=16, max_iters=150, lr_max=5e-3, sample_tokens=60)


def _size(name: str, what: str):
    """A size flag whose default (None) is filled from the preset."""
    return field(default=None, metadata=arg(f"{what} (default: {getattr(DEFAULT, name)}; "
                                            f"with --tiny: {getattr(TINY, name)})"))


@dataclass
class QuickstartConfig:
    out_dir: str = field(default="runs/quickstart", metadata=arg("folder for everything the run makes"))
    data: list[str] | None = field(default=None, metadata=arg(
        "UTF-8 text files to train on (default: the Python standard library's .py files)"))
    tiny: bool = field(default=False, metadata=arg("a ~10-second run: tiny corpus and model"))
    include_tests: bool = field(default=False, metadata=arg("also use the standard library's test suites"))
    max_bytes: int | None = _size("max_bytes", "corpus size cap in bytes")
    vocab_size: int | None = _size("vocab_size", "tokenizer vocabulary size")
    context_length: int | None = _size("context_length", "tokens per training sequence")
    d_model: int | None = _size("d_model", "model width")
    num_layers: int | None = _size("num_layers", "Transformer blocks")
    num_heads: int | None = _size("num_heads", "attention heads")
    batch_size: int | None = _size("batch_size", "sequences per batch")
    max_iters: int | None = _size("max_iters", "training iterations")
    lr_max: float | None = _size("lr_max", "peak learning rate")
    sample_tokens: int | None = _size("sample_tokens", "new tokens per sample")
    num_samples: int = field(default=3, metadata=arg("samples to generate at the end"))
    prompt: str = field(default="", metadata=arg("text the samples start with, after <|endoftext|> "
                                                 "(empty: unconditional samples)"))
    temperature: float = field(default=0.8, metadata=arg("sampling temperature"))
    top_p: float = field(default=0.95, metadata=arg("nucleus sampling threshold"))
    seed: int = field(default=0, metadata=arg("seed for the corpus order, training and sampling", low=0))
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), cpu, cuda, "
                                                     "cuda:N or mps"))
    progress: bool = field(default=True, metadata=arg("show progress bars and stage summaries"))

    def __post_init__(self) -> None:
        preset = TINY if self.tiny else DEFAULT
        for f in dataclasses.fields(Preset):
            if getattr(self, f.name) is None:
                setattr(self, f.name, getattr(preset, f.name))
            elif getattr(self, f.name) <= 0:
                raise UserError(f"--{f.name} must be positive, got {getattr(self, f.name)}")
        if self.vocab_size < 258:
            raise UserError(f"--vocab_size must be at least 258 (256 byte tokens, <|endoftext|> and "
                            f"merges), got {self.vocab_size}")
        if self.num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, got {self.num_samples}")
        if self.temperature < 0:
            raise UserError(f"--temperature must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")


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


def make_tokenizer(config: QuickstartConfig, corpus: Corpus, out_dir: Path) -> tuple[Path, Path]:
    """Stage 2: train_vocab.json and train_merges.txt, trained on train.txt."""
    return train_tokenizer.run(train_tokenizer.TrainTokenizerConfig(
        input=str(corpus.train_path), vocab_size=config.vocab_size, output_dir=str(out_dir),
        special_tokens=[EOS], progress=config.progress))


def make_token_ids(config: QuickstartConfig, corpus: Corpus, vocab_path: Path, merges_path: Path,
                   out_dir: Path) -> None:
    """Stage 3: train.npy and valid.npy."""
    workers = 1 if config.tiny else min(4, os.cpu_count() or 1)  # for a tiny corpus a pool costs more
    tokenize.run(tokenize.TokenizeConfig(
        inputs=[str(corpus.train_path), str(corpus.valid_path)], vocab_path=str(vocab_path),
        merges_path=str(merges_path), output_dir=str(out_dir), special_tokens=[EOS], workers=workers,
        progress=config.progress))


def train_config(config: QuickstartConfig, vocab_size: int, out_dir: Path) -> TrainConfig:
    """Stage 4's settings: warmup 5%, cosine decay to lr_max / 10, 10 validations, one checkpoint."""
    iters = config.max_iters
    return TrainConfig(
        train_tokens=str(out_dir / "train.npy"), val_tokens=str(out_dir / "valid.npy"), vocab_size=vocab_size,
        context_length=config.context_length, batch_size=config.batch_size, d_model=config.d_model,
        num_layers=config.num_layers, num_heads=config.num_heads, lr_max=config.lr_max,
        lr_min=config.lr_max / 10, warmup_iters=max(1, iters // 20), max_iters=iters,
        eval_interval=max(1, iters // 10), eval_iters=10, checkpoint_interval=iters, seed=config.seed,
        checkpoint_path=str(out_dir / "model.pt"), overwrite=True,  # a rerun replaces the whole pipeline
        device=config.device, quiet=not config.progress)


def make_samples(config: QuickstartConfig, model: TransformerLM, tokenizer: BPETokenizer) -> list[str]:
    """Stage 5: `num_samples` continuations of <|endoftext|> + prompt, generated as one batch."""
    device = next(model.parameters()).device
    eos_id = tokenizer.encode(EOS)[0]
    prompt_ids = [eos_id] + tokenizer.encode(config.prompt)
    prompt = torch.tensor([prompt_ids] * config.num_samples, device=device)
    generator = torch.Generator(device).manual_seed(config.seed)
    with tqdm(total=config.sample_tokens, unit="tok", desc="sampling", disable=not config.progress) as bar:
        ids = generate(model, prompt, config.sample_tokens, config.temperature, config.top_p, eos_id=eos_id,
                       generator=generator, on_token=lambda _: bar.update())
    texts = []
    for row in ids.tolist():
        new = row[len(prompt_ids) :]
        new = new[: new.index(eos_id)] if eos_id in new else new
        texts.append(config.prompt + tokenizer.decode(new))
    return texts


def run(config: QuickstartConfig) -> dict:
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
    vocab_path, merges_path = make_tokenizer(config, corpus, out_dir)
    tokenizer = BPETokenizer.from_files(vocab_path, merges_path, [EOS])
    clock("tokenizer")
    stage(3, "tokenize", config)
    make_token_ids(config, corpus, vocab_path, merges_path, out_dir)
    clock("tokenize")
    stage(4, "train", config)
    result = train(train_config(config, len(tokenizer), out_dir))
    clock("train")
    stage(5, "samples", config)
    checkpoint = result.best_checkpoint_path or result.checkpoint_path
    model, _ = load_model(checkpoint, device=resolve_device(config.device, DistContext()))
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
    rows = [
        ("corpus", f"{s['corpus']}: {s['train_bytes'] / 1e6:.2f} MB train, "
                   f"{s['valid_bytes'] / 1e6:.2f} MB valid"),
        ("tokens", f"{s['train_tokens']:,} train, {s['valid_tokens']:,} valid "
                   f"({s['train_bytes'] / s['train_tokens']:.2f} bytes/token, vocab {s['vocab_size']:,})"),
        ("model", f"{s['parameters'] / 1e6:.2f}M parameters: d_model {c['d_model']}, "
                  f"{c['num_layers']} layers, {c['num_heads']} heads, context {c['context_length']}"),
        ("training", f"{s['iterations']:,} iterations, {s['tokens_seen']:,} tokens, "
                     f"{s['train_tokens_per_s']:,.0f} tokens/s"),
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


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.quickstart") -> int:
    config = parse_config(QuickstartConfig, argv, prog, __doc__)
    # run() returns the summary for library callers; the command's exit status is 0.
    return run_cli(lambda: run(config))


if __name__ == "__main__":
    sys.exit(main())

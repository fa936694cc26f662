"""The settings of a quickstart run: two size presets (the default and --tiny) and one config dataclass.

This module imports no torch, so `minlm quickstart --help` and flag errors answer at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from NLM.min_lm.args import arg
from NLM.min_lm.errors import UserError


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
    minutes: float  # the training's time budget; 0: none, train max_iters iterations
    lr_max: float
    sample_tokens: int


# The default run trains for a fixed time, so the command takes the same few minutes on any machine (a
# faster one trains on more tokens; max_iters only caps it). Sizes tuned on 2 CPU cores for the best
# validation loss in that time (benchmarks/results/bench_quickstart.json holds the measured run). The
# tiny run is a fixed number of iterations.
DEFAULT = Preset(max_bytes=12_000_000, vocab_size=4096, context_length=256, d_model=128, num_layers=4,
                 num_heads=4, batch_size=16, max_iters=100_000, minutes=5.0, lr_max=5e-3, sample_tokens=200)
TINY = Preset(max_bytes=300_000, vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4,
              batch_size=16, max_iters=150, minutes=0.0, lr_max=5e-3, sample_tokens=60)


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
    max_iters: int | None = _size("max_iters", "training iterations (with --minutes: at most)")
    minutes: float | None = _size("minutes", "minutes of training, then it stops (0: no time limit); the "
                                             "learning-rate schedule spans them")
    lr_max: float | None = _size("lr_max", "peak learning rate")
    sample_tokens: int | None = _size("sample_tokens", "new tokens per sample")
    num_samples: int = field(default=3, metadata=arg("samples to generate at the end"))
    prompt: str = field(default="", metadata=arg("text the samples start with, after <|endoftext|> "
                                                 "(empty: unconditional samples)"))
    temperature: float = field(default=0.8, metadata=arg("sampling temperature"))
    top_p: float = field(default=0.95, metadata=arg("nucleus sampling threshold"))
    seed: int = field(default=0, metadata=arg("seed for the corpus order, training and sampling"))
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), cpu, cuda, "
                                                     "cuda:N or mps"))
    progress: bool = field(default=True, metadata=arg("show progress bars and stage summaries"))

    def __post_init__(self) -> None:
        preset = TINY if self.tiny else DEFAULT
        for f in dataclasses.fields(Preset):
            value = getattr(self, f.name)
            if value is None:
                setattr(self, f.name, getattr(preset, f.name))
            elif f.name == "minutes" and value < 0:
                raise UserError(f"--minutes must be at least 0 (0: no time limit), got {value}")
            elif f.name != "minutes" and value <= 0:
                raise UserError(f"--{f.name} must be positive, got {value}")
        if self.vocab_size < 258:
            raise UserError(f"--vocab_size must be at least 258 (256 byte tokens, <|endoftext|> and "
                            f"merges), got {self.vocab_size}")
        if self.num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, got {self.num_samples}")
        if self.temperature < 0:
            raise UserError(f"--temperature must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")

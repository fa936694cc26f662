"""Every setting of a training run, in one dataclass that is also the `minlm train` command line.

The fields are grouped as the help text shows them: data, model, optimizer, schedule, run length and
logging, checkpoints, and the machine. Defaults give a small model that trains on a laptop CPU in minutes.
A bad value fails here, at construction, with one line naming the flag, before any file is touched.
This module imports no torch, so `--help` and flag errors answer instantly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from NLM.min_lm.args import arg, check_fields
from NLM.min_lm.errors import UserError
from NLM.min_lm.options import ATTN_IMPLS, LR_SCHEDULES, OPTIMIZERS, RECIPE_NAMES, TRAIN_DTYPES

if TYPE_CHECKING:
    from NLM.min_lm.transformer.model import ModelConfig


@dataclass(frozen=True)
class Recipe:
    """The settings `--recipe` chooses; a flag given explicitly overrides its recipe's value."""

    optimizer: str
    muon_lr: float
    qk_norm: bool
    zero_init_proj: bool
    lr_schedule: str
    decay_frac: float
    embed_lr: float | None  # None: the embedding table at --lr_max
    head_lr: float | None   # None: the output head at --lr_max


# baseline: the seed's recipe (AdamW, cosine), unchanged. speedrun: the modded-nanogpt ingredients,
# tuned on the quickstart corpus and model (benchmarks/bench_recipe.py).
RECIPES = {  # keyed by options.RECIPE_NAMES
    "baseline": Recipe(optimizer="adamw", muon_lr=0.02, qk_norm=False, zero_init_proj=False,
                       lr_schedule="cosine", decay_frac=0.2, embed_lr=None, head_lr=None),
    "speedrun": Recipe(optimizer="muon", muon_lr=0.02, qk_norm=True, zero_init_proj=True,
                       lr_schedule="wsd", decay_frac=0.3, embed_lr=0.2, head_lr=0.01),
}


def _recipe(name: str, what: str, choices: tuple[str, ...] | None = None):
    """A flag whose default (None) comes from --recipe."""
    shown = {recipe: getattr(RECIPES[recipe], name) for recipe in RECIPES}
    values = ", ".join(f"{recipe} {'--lr_max' if value is None else value}"
                       for recipe, value in shown.items())
    return field(default=None, metadata=arg(f"{what} (default from --recipe: {values})", choices=choices))


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def default_d_ff(d_model: int) -> int:
    """SwiGLU's hidden size: 8/3 * d_model keeps the parameter count of a 4x MLP; a multiple of 64 is fast."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


@dataclass
class TrainConfig:
    # data
    train_tokens: str = field(metadata=arg("training tokens: a 1-D .npy array of token ids"))
    val_tokens: str = field(metadata=arg("validation tokens: a 1-D .npy array of token ids"))
    vocab_size: int = field(default=10_000, metadata=arg("vocabulary size of the tokenizer"))
    context_length: int = field(default=128, metadata=arg("tokens per training sequence"))
    batch_size: int = field(default=16, metadata=arg("sequences per micro-batch on each process"))
    # model
    d_model: int = field(default=128, metadata=arg("width of the residual stream"))
    num_layers: int = field(default=4, metadata=arg("Transformer blocks"))
    num_heads: int = field(default=4, metadata=arg("attention heads (must divide --d_model)"))
    d_ff: int | None = field(default=None, metadata=arg("SwiGLU hidden size "
                                                        "(default: 8/3 * d_model up to a multiple of 64)"))
    rope_theta: float = field(default=10_000.0, metadata=arg("RoPE base frequency"))
    norm_eps: float = field(default=1e-5, metadata=arg("RMSNorm epsilon (Llama imports may use 1e-6)"))
    attn_impl: str = field(default="sdpa", metadata=arg("attention kernel", choices=ATTN_IMPLS))
    gradient_checkpointing: bool = field(default=False, metadata=arg("recompute activations to save memory"))
    qk_norm: bool | None = _recipe("qk_norm", "RMSNorm of each head's queries and keys before RoPE")
    zero_init_proj: bool | None = _recipe("zero_init_proj", "attention output and SwiGLU w2 start at zero")
    # the recipe: a preset for the optimizer, schedule and model options marked "from --recipe"
    recipe: str = field(default="baseline", metadata=arg("baseline: AdamW + cosine, the seed's recipe; "
                                                        "speedrun: Muon, QK-norm, zero-init, WSD",
                                                        choices=RECIPE_NAMES))
    # optimizer and schedule
    optimizer: str | None = _recipe("optimizer", "adamw for all weights, or muon for the hidden matrices "
                                    "and AdamW for the rest", OPTIMIZERS)
    muon_lr: float | None = _recipe("muon_lr", "Muon's peak learning rate (follows --lr_max's schedule)")
    lr_max: float = field(default=1e-3, metadata=arg("peak learning rate (of AdamW), reached after warmup"))
    embed_lr: float | None = _recipe("embed_lr", "peak learning rate of the embedding table (AdamW)")
    head_lr: float | None = _recipe("head_lr", "peak learning rate of the output head (AdamW)")
    lr_min: float = field(default=1e-4, metadata=arg("final learning rate of the decay"))
    lr_schedule: str | None = _recipe("lr_schedule", "cosine decay, or wsd: warmup, constant, "
                                      "then linear decay over the last --decay_frac", LR_SCHEDULES)
    decay_frac: float | None = _recipe("decay_frac", "wsd: fraction of --max_iters spent decaying")
    warmup_iters: int = field(default=50, metadata=arg("linear warmup iterations"))
    weight_decay: float = field(default=0.1, metadata=arg("AdamW weight decay "
                                                                "(not on norms/embeddings)"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=arg("AdamW betas"))
    grad_clip: float = field(default=1.0, metadata=arg("clip the global gradient norm "
                                                            "to this; 0 disables"))
    grad_accum_steps: int = field(default=1, metadata=arg("micro-batches accumulated per optimizer step"))
    # run length and logging
    max_iters: int = field(default=1000, metadata=arg("optimizer steps in the whole run"))
    max_minutes: float | None = field(default=None, metadata=arg(
        "also stop after this many minutes of training (validation included), then evaluate and save; "
        "the LR schedule follows the larger of iteration/max_iters and time/budget"))
    eval_interval: int = field(default=100, metadata=arg("iterations between validation passes"))
    eval_iters: int = field(default=10, metadata=arg("validation batches per pass "
                                                             "(the same ones every time)"))
    log_interval: int = field(default=10, metadata=arg("iterations between training-loss log lines"))
    seed: int = field(default=0, metadata=arg("seed for initialisation and batch sampling", low=0))
    run_dir: str | None = field(default=None, metadata=arg("where metrics.jsonl and loss.png go "
                                                           "(default: the checkpoint's directory)"))
    wandb_project: str | None = field(default=None, metadata=arg("also log to this Weights & Biases project"))
    quiet: bool = field(default=False, metadata=arg("no progress bar or summary (for library use and tests)"))
    # checkpoints
    checkpoint_path: str = field(default="runs/model.pt", metadata=arg("checkpoint file; the best one "
                                                                       "goes beside it as <stem>_best.pt"))
    checkpoint_interval: int = field(default=250, metadata=arg("iterations between checkpoints"))
    resume: bool = field(default=False, metadata=arg("continue exactly from --checkpoint_path"))
    overwrite: bool = field(default=False, metadata=arg("let a fresh run replace an earlier run's "
                                                        "checkpoints and metrics in the same place"))
    init_from: str | None = field(default=None, metadata=arg("start from this checkpoint's weights only "
                                                             "(fine-tuning, e.g. after minlm import-hf)"))
    # machine
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), "
                                                     "cpu, cuda, cuda:N or mps"))
    dtype: str = field(default="auto", metadata=arg("compute dtype; bfloat16 autocasts over float32 weights; "
                                                    "auto = bfloat16 on CUDA and on CPUs with native bf16",
                                                    choices=("auto", *TRAIN_DTYPES)))
    compile: bool | None = field(default=None, metadata=arg("torch.compile the model (default: on where it "
                                                            "works: CUDA, and CPUs with a C++ compiler)"))
    peak_tflops: float | None = field(default=None, metadata=arg("the GPU's peak bf16 TFLOP/s for the MFU "
                                                                 "figure (default: a table of common GPUs)"))

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model)
        self.betas = tuple(self.betas)
        if self.recipe not in RECIPES:
            raise UserError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for f in dataclasses.fields(Recipe):
            if getattr(self, f.name) is None:
                setattr(self, f.name, getattr(RECIPES[self.recipe], f.name))
        self._validate()

    def _validate(self) -> None:
        check_fields(self)  # types, finiteness, 64-bit ints, declared ranges: for Python callers too
        positive = ("vocab_size", "context_length", "batch_size", "d_model", "num_layers", "num_heads",
                    "d_ff", "grad_accum_steps", "max_iters", "eval_interval", "eval_iters", "log_interval",
                    "checkpoint_interval")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"--{name} must be a positive integer, got {value!r}")
        for name in ("lr_max", "lr_min", "weight_decay", "grad_clip", "warmup_iters"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)!r}")
        if self.d_model % self.num_heads:
            raise UserError(f"--d_model ({self.d_model}) must be divisible by --num_heads ({self.num_heads})")
        if (self.d_model // self.num_heads) % 2:
            head_dim = self.d_model // self.num_heads
            raise UserError(f"--d_model / --num_heads ({head_dim}) must be even: RoPE rotates pairs")
        if self.rope_theta <= 0:
            raise UserError(f"--rope_theta must be positive, got {self.rope_theta!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UserError(f"--max_minutes must be positive, got {self.max_minutes!r}")
        if self.norm_eps <= 0:
            raise UserError(f"--norm_eps must be positive, got {self.norm_eps!r}")
        if self.lr_min > self.lr_max:
            raise UserError(f"--lr_min ({self.lr_min}) must not exceed --lr_max ({self.lr_max})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas must be two numbers in [0, 1), got {self.betas!r}")
        if not _DEVICE.fullmatch(self.device):
            raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise UserError(f"--attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {self.attn_impl!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                            f"got {self.lr_schedule!r}")
        if not 0 <= self.decay_frac <= 1:
            raise UserError(f"--decay_frac must lie in [0, 1], got {self.decay_frac!r}")
        if self.muon_lr < 0:
            raise UserError(f"--muon_lr must not be negative, got {self.muon_lr!r}")
        for name in ("embed_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name} must not be negative, got {value!r}")
            if value is not None and self.lr_max == 0:
                raise UserError(f"--{name} needs --lr_max > 0: it follows --lr_max's schedule, "
                                f"scaled by --{name} / --lr_max")
        if self.optimizer == "muon" and self.lr_max == 0:
            raise UserError("--optimizer muon needs --lr_max > 0: Muon's learning rate follows "
                            "--lr_max's schedule, scaled by --muon_lr / --lr_max")
        if self.dtype not in ("auto", *TRAIN_DTYPES):
            raise UserError(f"--dtype must be one of auto, {', '.join(TRAIN_DTYPES)}, got {self.dtype!r}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError(f"--peak_tflops must be positive, got {self.peak_tflops!r}")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite exclude each other: resume continues the earlier run, "
                            "overwrite replaces it")
        if self.resume and self.init_from is not None:
            raise UserError("--resume and --init_from exclude each other: resume continues a run, "
                            "init_from starts a new one from given weights")
        if Path(self.checkpoint_path).suffix == "" or Path(self.checkpoint_path).name.startswith("."):
            raise UserError(f"--checkpoint_path needs a file name with an extension, e.g. runs/model.pt, "
                            f"got {self.checkpoint_path!r}")

    def model_config(self) -> ModelConfig:
        """The model's shape: each field of ModelConfig taken by name from this config.

        ModelConfig is the one record of a model's shape (checkpoints store it); this is the one place a
        training config becomes one, so a field added there cannot be forgotten here.
        """
        from NLM.min_lm.transformer.model import ModelConfig  # torch: imported only once a model is built

        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})

    @property
    def best_checkpoint_path(self) -> Path:
        """The best-validation checkpoint, beside the latest one: runs/model.pt -> runs/model_best.pt."""
        path = Path(self.checkpoint_path)
        return path.with_name(f"{path.stem}_best{path.suffix}")

    @property
    def time_budget(self) -> float | None:
        """--max_minutes in seconds."""
        return None if self.max_minutes is None else 60.0 * self.max_minutes

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path(self.checkpoint_path).parent

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy, stored in every checkpoint so a run can be inspected and repeated."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

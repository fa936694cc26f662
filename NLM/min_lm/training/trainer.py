"""The training loop: `train(config)` turns token files into a trained checkpoint.

One iteration = one optimizer step: `grad_accum_steps` micro-batches are run forward and backward (their
losses scaled by 1/steps so the gradients add up to the mean), the gradient norm is clipped, and the
optimizer (AdamW, or Muon for the hidden matrices beside AdamW) steps with the learning rate of the
schedule (warmup + cosine, or warmup-stable-decay). Around that loop sit validation on fixed
batches, metrics, the best checkpoint, and exact resumption: a checkpoint holds the model, the optimizer,
the RNG states and the batch sampler's position, so a resumed run draws the same batches and computes the
same losses as one that never stopped.

The host never waits for the device inside a step: the loss stays a tensor on the device and is read at
`log_interval`; a non-finite loss or gradient norm is remembered on the device (`DivergenceWatch`) and
read at the same points and before every checkpoint, so no checkpoint ever holds the weights of a diverged
step. By default the model is compiled and computes in bfloat16 where that is safe
(`acceleration.py`); the logged tokens/s and MFU count training steps only (`throughput.py`).

Data parallelism (`torchrun --nproc_per_node N`) is wrapped around the unchanged model by
`NLM.min_lm.distributed`: every process runs this same loop on its own slice of each global batch; DDP
averages the gradients; logged losses are averaged over processes; only process 0 (`ctx.is_main`) prints,
writes metrics and saves checkpoints. Anything that decides whether to stop (a NaN, a Ctrl-C) is agreed on
by all processes, in the same all-reduce as the logged loss, so none is left waiting in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from NLM.min_lm.distributed import (
    DistContext,
    all_reduce_mean,
    all_reduce_sum,
    setup_distributed,
    sync_context,
    teardown,
    wrap_model,
)
from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import (
    check_output_dir,
    check_output_file,
    directory_lock,
    missing_dirs,
    remove_stale_temps,
)
from NLM.min_lm.training.acceleration import resolve_compile, resolve_dtype
from NLM.min_lm.training.budget import budget_spent, effective_iteration
from NLM.min_lm.training.config import TrainConfig
from NLM.min_lm.training.data import BatchSampler, open_tokens, validation_starts
from NLM.min_lm.training.interrupt import StopRequest, stop_requests
from NLM.min_lm.training.memory import keep_freed_memory
from NLM.min_lm.training.metrics import MetricsLog, TrainResult, plot_losses, start_wandb, summary
from NLM.min_lm.training.throughput import Throughput, flops_per_token, peak_flops
from NLM.min_lm.transformer import (
    AdamW,
    ModelConfig,
    TransformerLM,
    gradient_clipping,
    param_groups,
    save_checkpoint,
)
from NLM.min_lm.transformer.checkpoint import load_model_state, read_checkpoint, restore_checkpoint
from NLM.min_lm.transformer.checkpoint_schema import TRAINING_STATE_KEYS
from NLM.min_lm.transformer.optim import CombinedOptimizer, muon_with_adamw, own_rates, set_lr, with_own_rates
from NLM.min_lm.transformer.utils import batch_windows, global_grad_norm, lr_at


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN or infinite; no checkpoint holds the weights that followed."""


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DivergenceWatch:
    """Remembers, on the device, the first iteration whose loss or gradient norm was not finite.

    Checking `math.isfinite(loss.item())` every step would make the host wait for the device every step.
    Instead each step updates three 0-dim tensors without waiting, and the trainer reads them where it waits
    anyway (a log line) and before anything is saved. The gradient norm covers the update, not only the
    loss: finite gradients give a finite AdamW update, so finite weights stay finite.
    """

    def __init__(self, device: torch.device) -> None:
        self.iteration = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)

    def observe(self, iteration: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        first = (self.iteration == 0) & ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        self.iteration.masked_fill_(first, iteration)
        self.loss = torch.where(first, loss.float(), self.loss)
        self.grad_norm = torch.where(first, grad_norm.float(), self.grad_norm)


def train(config: TrainConfig, *, loss_fn: LossFn | None = None,
          on_record: Callable[[dict[str, Any]], object] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> TrainResult:
    """Train a TransformerLM as `config` says. The body of `minlm train`, callable from Python.

    loss_fn(logits, targets): the training and validation loss (e.g. to add label smoothing); by default
    the model's fused cross-entropy, which never materialises the logits.
    on_record(record): called with every metrics record (a training or validation line of metrics.jsonl)
    right after it is logged, e.g. to watch a run from a notebook.
    clock(): seconds, measuring the training time that --max_minutes bounds (tests pass a fake one).
    """
    ctx, device = setup_distributed(config.device)
    if device.type == "cpu":  # a CPU step reuses its freed buffers instead of faulting them in again
        keep_freed_memory()
    try:
        with claim_outputs(config) if ctx.is_main else contextlib.nullcontext():
            return Trainer(config, ctx, device, loss_fn=loss_fn, on_record=on_record, clock=clock).run()
    except UserError as e:
        if ctx.enabled:  # under torchrun every rank prints its own error: say whose it is
            e.args = (f"[rank {ctx.rank}] {e}",)
        raise
    finally:
        teardown(ctx)


def make_optimizer(model: TransformerLM, c: TrainConfig) -> AdamW | CombinedOptimizer:
    """AdamW for every weight, or Muon for the hidden matrices and AdamW for the rest (--optimizer)."""
    if c.optimizer == "muon":
        return muon_with_adamw(model, c.muon_lr, c.lr_max, c.betas, c.weight_decay, embed_lr=c.embed_lr,
                               head_lr=c.head_lr)
    groups = with_own_rates(param_groups(model, c.weight_decay), c.lr_max,
                            own_rates(model, c.embed_lr, c.head_lr))
    return AdamW(groups, lr=c.lr_max, betas=c.betas, weight_decay=c.weight_decay)


@contextlib.contextmanager
def claim_outputs(config: TrainConfig) -> Iterator[None]:
    """Make sure the run's outputs can be written and are this run's alone, before any work is done.

    The checkpoint's directory (and the run directory, if elsewhere) must take files, and no other run may
    be using them: a second run on the same checkpoint would silently lose one run's checkpoints and
    interleave two histories in metrics.jsonl. A fresh run does not replace an earlier run's files
    (its *_best.pt may be better than anything this run will reach) unless asked to with --overwrite.
    """
    checkpoint = check_output_file(config.checkpoint_path, "--checkpoint_path")
    run_path = check_output_dir(config.run_path, "--run_dir")
    flags = {checkpoint.parent.resolve(): "--checkpoint_path", run_path.resolve(): "--run_dir"}
    created = missing_dirs(checkpoint.parent) + missing_dirs(run_path)
    try:
        with contextlib.ExitStack() as locks:
            for directory in sorted(flags):
                locks.enter_context(directory_lock(directory, flags[directory]))
            for output in (checkpoint, config.best_checkpoint_path, run_path / "loss.png"):
                remove_stale_temps(output)  # left by writers killed outright: up to a checkpoint's size
            earlier = [p for p in (checkpoint, config.best_checkpoint_path, run_path / "metrics.jsonl")
                       if p.exists()]
            if earlier and not config.resume and not config.overwrite:
                raise UserError(f"{', '.join(map(str, earlier))}: an earlier run is there; --resume "
                                "continues it, --overwrite replaces it (or choose another --checkpoint_path)")
            yield
    except BaseException:
        for directory in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # only if still empty: a failed run leaves nothing behind
                directory.rmdir()
        raise


class Trainer:
    """Holds one run's state; `run()` executes it. Built in the order a reader would set things up."""

    def __init__(self, config: TrainConfig, ctx: DistContext, device: torch.device, *,
                 loss_fn: LossFn | None = None,
                 on_record: Callable[[dict[str, Any]], object] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config, self.ctx, self.device, self.clock = config, ctx, device, clock
        self.loss_fn, self.on_record = loss_fn, on_record
        c = config
        # 1. data: checked in full before anything is built or written
        self.train_tokens = open_tokens(c.train_tokens, "--train_tokens", c.vocab_size, c.context_length)
        self.val_tokens = open_tokens(c.val_tokens, "--val_tokens", c.vocab_size, c.context_length)
        self.sampler = BatchSampler(self.train_tokens, c.batch_size, c.context_length, c.seed,
                                    ctx.rank, ctx.world_size)
        self.val_starts = validation_starts(self.val_tokens, c.eval_iters, c.batch_size, c.context_length,
                                            c.seed, ctx.rank, ctx.world_size)
        use_wandb = c.wandb_project and ctx.is_main
        self.wandb_run = start_wandb(c.wandb_project, c.to_dict()) if use_wandb else None

        # 2. model and optimizer: the same seed on every process, so all start from identical weights
        self.dtype = resolve_dtype(c.dtype, device)
        self.use_compile, self.compile_note = resolve_compile(c.compile, device)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the float32 parts
        torch.manual_seed(c.seed)
        self.model = TransformerLM.from_config(c.model_config(), device=device, attn_impl=c.attn_impl,
                                               gradient_checkpointing=c.gradient_checkpointing)
        self.optimizer = make_optimizer(self.model, c)

        # 3. where the run stands: fresh, or exactly where its checkpoint left off
        self.iteration = 0
        self.best_val_loss = math.inf
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.saved_iteration: int | None = None  # the iteration in the checkpoint file now, if any
        self.val_loss: float | None = None  # the latest validation loss
        self.session_start = clock()
        if c.resume:
            self._resume()
        elif c.init_from is not None:
            self._init_weights(Path(c.init_from))
        self.agreed_elapsed = self.elapsed_before  # rank 0's training time, the same on every process

        # 4. what runs the steps: compiled where that works (the fused loss inside stays eager, see
        #    transformer/loss.py), wrapped for data parallelism; the bare `self.model` shares its
        #    parameters and is what checkpoints store
        self.compiled = torch.compile(self.model) if self.use_compile else self.model
        self.parallel = wrap_model(self.compiled, ctx, device)
        self.global_batch_tokens = ctx.world_size * c.batch_size * c.grad_accum_steps * c.context_length
        self.watch = DivergenceWatch(device)
        self.throughput = Throughput(device)
        self.flops_per_token = flops_per_token(self.model.config)
        self.peak_flops = peak_flops(device, c.peak_tflops)

    # ---- one optimizer step ------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 compute over float32 master weights, or plain float32."""
        if self.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The fused loss path of the model, or the caller's loss_fn on its logits."""
        with self.autocast():
            return model(x, targets=y) if self.loss_fn is None else self.loss_fn(model(x), y)

    def train_step(self, lr: float) -> torch.Tensor:
        """Accumulate gradients over the micro-batches, then clip and step. Returns this process's loss as
        a 0-dim tensor on the device: nothing here waits for the device."""
        set_lr(self.optimizer, lr)
        steps = self.config.grad_accum_steps
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(steps):
            x, y = self.sampler.next_batch(self.device)
            # DDP averages gradients across processes only on the last micro-batch's backward
            with sync_context(self.parallel, self.ctx, sync=micro_step == steps - 1):
                loss = self.loss(self.parallel, x, y) / steps
                loss.backward()
            loss_sum += loss.detach()
        parameters = list(self.model.parameters())
        if self.config.grad_clip > 0:
            grad_norm = gradient_clipping(parameters, self.config.grad_clip)
        else:
            grad_norm = global_grad_norm(parameters)
        self.watch.observe(self.iteration + 1, loss_sum, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def check_finite(self) -> None:
        """Raise TrainingDiverged if any step so far had a non-finite loss or gradient norm (waits for
        the device). Called before every save, so every checkpoint holds finite weights."""
        if int(self.watch.iteration):
            raise TrainingDiverged(self._divergence_message())

    def _divergence_message(self) -> str:
        c, iteration = self.config, int(self.watch.iteration)
        kept = (f"{c.checkpoint_path} still holds iteration {self.saved_iteration}, saved before it"
                if self.saved_iteration is not None else "no checkpoint was written")
        if not iteration:  # under DDP: only another process saw it
            return f"training diverged on another process; {kept}"
        # (the iteration budget's rate: under --max_minutes the schedule may have run ahead of it)
        lr = lr_at(c.lr_schedule, iteration - 1, c.max_iters, c.lr_max, c.lr_min, c.warmup_iters,
                   c.decay_frac)
        loss, grad_norm = float(self.watch.loss), float(self.watch.grad_norm)
        what = (f"loss is {loss}" if not math.isfinite(loss)
                else f"gradient norm is {grad_norm} (loss {loss:.4g})")
        return (f"training diverged: {what} at iteration {iteration} (lr {lr:.3g}); {kept}. "
                f"Try a lower --lr_max, longer --warmup_iters or --grad_clip 1")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches, averaged over all processes."""
        self.compiled.eval()
        losses = []
        for starts in self.val_starts:
            x, y = batch_windows(self.val_tokens, starts, self.config.context_length, self.device)
            losses.append(self.loss(self.compiled, x, y).float())
        self.compiled.train()
        return all_reduce_mean(torch.stack(losses).mean().item(), self.ctx, self.device)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a resumable checkpoint (process 0 only: all processes hold the same weights), after checking
        that no step so far diverged (DDP averages the gradients, so every process sees the same norm)."""
        self.check_finite()
        if not self.ctx.is_main:
            return
        save_checkpoint(self.model, self.optimizer, self.iteration, path,
                        train_config=self.config.to_dict(),
                        sampler_state=self.sampler.state(),
                        best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                        elapsed=self.elapsed())

    def _check_shape(self, saved: dict[str, Any], path: Path, flag: str) -> None:
        """A checkpoint fits only a model of the same shape: compare the whole ModelConfig (RoPE's base and
        the norm's epsilon are not in the weights, so only this notices them) and name every difference."""
        theirs, ours = ModelConfig(**saved["model_config"]), self.model.config
        # zero_init_proj only chose the starting weights, which the checkpoint's replace
        names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "zero_init_proj"]
        differ = [name for name in names if getattr(theirs, name) != getattr(ours, name)]
        if differ:
            saved_values = ", ".join(f"{name} {getattr(theirs, name)}" for name in differ)
            flag_values = ", ".join(f"--{name} {getattr(ours, name)}" for name in differ)
            raise UserError(f"{flag}: {path} has {saved_values}, but the flags give {flag_values}")

    def _init_weights(self, path: Path) -> None:
        """Fine-tuning: take the weights of `path`, start a fresh optimizer, schedule and iteration count."""
        saved = read_checkpoint(path)
        if not saved.get("model_config"):
            raise UserError(f"--init_from: {path} stores no model config")
        self._check_shape(saved, path, "--init_from")
        load_model_state(self.model, saved["model"], path)

    def _resume(self) -> None:
        """Load model, optimizer, RNG states and sampler position; every process loads the same file."""
        path = Path(self.config.checkpoint_path)
        if not path.is_file():
            raise UserError(f"--resume: no checkpoint at {path} (--checkpoint_path)")
        saved = read_checkpoint(path)
        missing = [key for key in TRAINING_STATE_KEYS if key not in saved]
        if missing or saved.get("optimizer") is None or not saved.get("model_config"):
            raise UserError(f"--resume: {path} holds no complete training state (it lacks "
                            f"{', '.join(missing) or 'optimizer or model_config'}; was it written by minlm "
                            "train?)")
        self._check_shape(saved, path, "--resume")
        saved_optimizer = saved.get("train_config", {}).get("optimizer", "adamw")
        if saved_optimizer != self.config.optimizer:
            raise UserError(f"--resume: {path} was trained with --optimizer {saved_optimizer}, "
                            f"but --optimizer is {self.config.optimizer}")
        self.iteration = restore_checkpoint(saved, self.model, self.optimizer, path)
        if self.iteration >= self.config.max_iters:
            raise UserError(f"--resume: {path} is already at iteration {self.iteration}; "
                            f"raise --max_iters (now {self.config.max_iters}) to train further")
        self.sampler.load_state(saved["sampler_state"])
        self.best_val_loss = saved["best_val_loss"] if saved["best_val_loss"] is not None else math.inf
        self.elapsed_before = saved["elapsed"]
        if self.config.time_budget is not None and self.elapsed_before >= self.config.time_budget:
            raise UserError(f"--resume: {path} has already trained {self.elapsed_before / 60:.1f} minutes; "
                            f"raise --max_minutes (now {self.config.max_minutes}) to train further")
        self.saved_iteration = self.iteration

    # ---- the loop ------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Each iteration: one optimizer step, then on their intervals a log line (where a stop request is
        agreed on), a validation pass (which may save the best checkpoint) and a checkpoint. The last
        iteration always logs, validates and saves. The first step of a session, where compilation happens,
        and everything but the steps are left out of tokens/s."""
        c = self.config
        self.metrics = self._open_metrics()
        self._say(self._header())
        self.session_start = self.clock()
        first_iteration = self.iteration
        stopped_by = ""
        last = False
        # Signals stay routed to `stop` until the very end: a second Ctrl-C during the final save must
        # not interrupt it (it would leave no checkpoint at all).
        with stop_requests() as stop:
            try:
                with self._progress_bar() as self.bar:
                    while not last and not stopped_by:
                        lr = self.learning_rate()
                        if self.iteration == first_iteration:
                            with self.throughput.paused():
                                loss = self.train_step(lr)
                        else:
                            loss = self.train_step(lr)
                            self.throughput.add(self.global_batch_tokens)
                        self.iteration += 1
                        self.bar.update()
                        last = self.budget_spent()
                        if self.iteration % c.log_interval == 0 or last:
                            stopped_by = self.log_training(loss, lr, stop)
                        if self.iteration % c.eval_interval == 0 or last:
                            with self.throughput.paused():
                                self.validate()
                        if self.iteration % c.checkpoint_interval == 0 or last:
                            with self.throughput.paused():
                                self.checkpoint()
                        if not self.ctx.enabled and stop.requested:  # alone, a signal needs no agreement
                            stopped_by = stop.signal_name
                if stopped_by and self.saved_iteration != self.iteration:
                    self.checkpoint()
            finally:
                if self.wandb_run is not None:
                    self.wandb_run.finish()
            return self._finish(stopped_by)

    def learning_rate(self) -> float:
        """The schedule at the run's progress: the larger of iteration/max_iters and time/budget."""
        c = self.config
        it = effective_iteration(self.iteration, c.max_iters, self.agreed_elapsed, c.time_budget)
        return lr_at(c.lr_schedule, it, c.max_iters, c.lr_max, c.lr_min, c.warmup_iters, c.decay_frac)

    def budget_spent(self) -> bool:
        """Whether the iterations or the time are used up. Under torchrun the time is rank 0's, sent to
        every process every `log_interval` iterations (a collective waits for the GPU, so not after every
        step), so all of them use the same learning rate and stop after the same iteration."""
        c = self.config
        if c.time_budget is not None and (not self.ctx.enabled or self.iteration % c.log_interval == 0):
            elapsed = self.elapsed() if self.ctx.is_main else 0.0
            self.agreed_elapsed = all_reduce_mean(elapsed, self.ctx, self.device) * self.ctx.world_size
        return budget_spent(self.iteration, c.max_iters, self.agreed_elapsed, c.time_budget)

    def log_training(self, loss: torch.Tensor, lr: float, stop: StopRequest) -> str:
        """Log the loss, tokens/s and (on GPUs) MFU. This is where the host waits for the device, once per
        log_interval: one read, and under DDP one all-reduce, carries the loss, the divergence flag and
        the stop request. Returns why to stop ('' to go on); raises TrainingDiverged."""
        flags = torch.tensor([float(stop.requested)], device=self.device)
        values = torch.cat([loss.float().reshape(1), (self.watch.iteration > 0).float().reshape(1), flags])
        loss_sum, diverged, stops = all_reduce_sum(values, self.ctx).tolist()
        if diverged:
            raise TrainingDiverged(self._divergence_message())
        loss_value = loss_sum / self.ctx.world_size
        rate = self.throughput.rate()
        record = {"iter": self.iteration, "loss": loss_value, "lr": lr, "tokens_per_s": rate}
        if self.peak_flops is not None:
            record["mfu"] = rate * self.flops_per_token / self.peak_flops
        self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}",
                             **({"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}))
        self._record(record)
        if not stops:
            return ""
        return stop.signal_name or "stop requested by another process"

    def validate(self) -> None:
        """Evaluate, log, keep the best checkpoint, redraw the loss curve."""
        self.val_loss = self.evaluate()
        perplexity = math.exp(min(self.val_loss, 700))  # exp overflows a float past ~709
        self._record({"iter": self.iteration, "val_loss": self.val_loss, "val_ppl": perplexity})
        self._say(f"iter {self.iteration}: val loss {self.val_loss:.4f}, perplexity {perplexity:.2f}",
                  self.bar.write)
        if self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
            self.save(self.config.best_checkpoint_path)
        if self.metrics is not None:
            plot_losses(self.metrics.records, self.config.run_path / "loss.png")

    def checkpoint(self) -> None:
        self.save(self.config.checkpoint_path)
        self.saved_iteration = self.iteration

    def _finish(self, stopped_by: str) -> TrainResult:
        c = self.config
        if stopped_by and self.metrics is not None and self.metrics.records:  # (a finished run just did)
            plot_losses(self.metrics.records, c.run_path / "loss.png")
        best = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        result = TrainResult(
            iterations=self.iteration,
            tokens_seen=self.iteration * self.global_batch_tokens,
            global_batch_tokens=self.global_batch_tokens,
            elapsed=self.elapsed(),
            final_val_loss=self.val_loss,
            best_val_loss=best,
            checkpoint_path=Path(c.checkpoint_path),
            best_checkpoint_path=c.best_checkpoint_path if best is not None else None,
            metrics_path=c.run_path / "metrics.jsonl",
            plot_path=c.run_path / "loss.png",
            interrupted=bool(stopped_by),
        )
        if not stopped_by and self.iteration < c.max_iters:
            self._say(f"time budget of {c.max_minutes:g} min used up at iteration {self.iteration:,}: "
                      f"{result.tokens_seen:,} tokens seen")
        if stopped_by and self.ctx.is_main:  # said even when quiet: the user must learn where the work went
            print(f"{stopped_by}: stopped after iteration {self.iteration}; checkpoint saved to "
                  f"{c.checkpoint_path}; continue with the same flags plus --resume")
        self._say(f"training {'interrupted' if stopped_by else 'done'}:\n{summary(result)}")
        return result

    # ---- reporting ----------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training seconds so far, over all sessions of a resumed run."""
        return self.elapsed_before + self.clock() - self.session_start

    def _open_metrics(self) -> MetricsLog | None:
        """metrics.jsonl on process 0 (a fresh run replaces an earlier one only with --overwrite)."""
        c = self.config
        if not self.ctx.is_main:
            return None
        return MetricsLog(c.run_path / "metrics.jsonl", resume_from=self.iteration if c.resume else None,
                          wandb_run=self.wandb_run)

    def _progress_bar(self) -> tqdm:
        """Iterations out of max_iters; a time-budgeted run counts them without knowing the end."""
        total = self.config.max_iters if self.config.time_budget is None else None
        return tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True,
                    disable=self.config.quiet or not self.ctx.is_main)

    def _say(self, text: str, write: Callable[[str], Any] = print) -> None:
        """Print on process 0 unless the run is quiet."""
        if self.ctx.is_main and not self.config.quiet:
            write(text)

    def _record(self, record: dict[str, Any]) -> None:
        record = {**record, "elapsed": self.elapsed()}
        if self.metrics is not None:
            self.metrics.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def _header(self) -> str:
        c, ctx = self.config, self.ctx
        start = f"resuming at iteration {self.iteration}" if self.iteration else "starting"
        mode = "compiled" if self.use_compile else "eager"
        lines = [self.compile_note] if self.compile_note else []
        if self.peak_flops is not None:
            lines.append(f"MFU against {self.peak_flops / 1e12:.0f} TFLOP/s bf16 peak, "
                         f"{self.flops_per_token / 1e6:.1f} MFLOPs per token (6 N + 6 L T d_model)")
        return "\n".join(lines + [
            f"{start}: {self.model.num_parameters():,} parameters on {self.device} ({self.dtype}, {mode}); "
                f"global batch {self.global_batch_tokens:,} tokens = {ctx.world_size} process(es) x "
                f"{c.batch_size} sequences x {c.grad_accum_steps} accumulation x {c.context_length} tokens; "
                f"{c.max_iters} iterations" + (f" or {c.max_minutes:g} min" if c.max_minutes else "")])

"""The training loop: `train(config)` turns token files into a trained checkpoint.

One iteration = one optimizer step: `grad_accum_steps` micro-batches are run forward and backward (their
losses scaled by 1/steps so the gradients add up to the mean), the gradient norm is clipped, and AdamW
steps with the learning rate of the warmup + cosine schedule. Around that loop sit validation on fixed
batches, metrics, the best checkpoint, and exact resumption: a checkpoint holds the model, the optimizer,
the RNG states and the batch sampler's position, so a resumed run draws the same batches and computes the
same losses as one that never stopped.

Data parallelism (`torchrun --nproc_per_node N`) is wrapped around the unchanged model by
`NLM.min_lm.distributed`: every process runs this same loop on its own slice of each global batch; DDP
averages the gradients; logged losses are averaged over processes; only process 0 (`ctx.is_main`) prints,
writes metrics and saves checkpoints. Anything that decides whether to stop (a NaN, a Ctrl-C) is agreed on
by all processes, so none is left waiting in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from NLM.min_lm.distributed import (
    DistContext,
    all_reduce_mean,
    setup_distributed,
    sync_context,
    teardown,
    wrap_model,
)
from NLM.min_lm.errors import UserError
from NLM.min_lm.training.config import TrainConfig
from NLM.min_lm.training.data import BatchSampler, open_tokens, validation_starts
from NLM.min_lm.training.interrupt import StopRequest, stop_requests
from NLM.min_lm.training.metrics import MetricsLog, TrainResult, plot_losses, start_wandb, summary
from NLM.min_lm.transformer import (
    AdamW,
    ModelConfig,
    TransformerLM,
    cross_entropy,
    get_lr_cosine_schedule,
    gradient_clipping,
    param_groups,
    save_checkpoint,
)
from NLM.min_lm.transformer.checkpoint import load_model_state, read_checkpoint, restore_checkpoint
from NLM.min_lm.transformer.utils import batch_windows


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops before the bad step reaches any checkpoint."""


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train(config: TrainConfig, *, loss_fn: LossFn = cross_entropy,
          on_record: Callable[[dict[str, Any]], object] | None = None) -> TrainResult:
    """Train a TransformerLM as `config` says. The body of `minlm train`, callable from Python.

    loss_fn(logits, targets): the training and validation loss (e.g. to add label smoothing).
    on_record(record): called with every metrics record (a training or validation line of metrics.jsonl)
    right after it is logged, e.g. to watch a run from a notebook.
    """
    ctx, device = setup_distributed(config.device)
    try:
        return Trainer(config, ctx, device, loss_fn=loss_fn, on_record=on_record).run()
    except UserError as e:
        if ctx.enabled:  # under torchrun every rank prints its own error: say whose it is
            e.args = (f"[rank {ctx.rank}] {e}",)
        raise
    finally:
        teardown(ctx)


class Trainer:
    """Holds one run's state; `run()` executes it. Built in the order a reader would set things up."""

    def __init__(self, config: TrainConfig, ctx: DistContext, device: torch.device, *,
                 loss_fn: LossFn = cross_entropy,
                 on_record: Callable[[dict[str, Any]], object] | None = None) -> None:
        self.config, self.ctx, self.device = config, ctx, device
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
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the float32 parts
        torch.manual_seed(c.seed)
        self.model = TransformerLM.from_config(c.model_config(), device=device, attn_impl=c.attn_impl,
                                               gradient_checkpointing=c.gradient_checkpointing)
        self.optimizer = AdamW(param_groups(self.model, c.weight_decay), lr=c.lr_max, betas=c.betas,
                               weight_decay=c.weight_decay)

        # 3. where the run stands: fresh, or exactly where its checkpoint left off
        self.iteration = 0
        self.best_val_loss = math.inf
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.saved_iteration: int | None = None  # the iteration in the checkpoint file now, if any
        self.val_loss: float | None = None  # the latest validation loss
        self.session_start = time.perf_counter()
        if c.resume:
            self._resume()
        elif c.init_from is not None:
            self._init_weights(Path(c.init_from))

        # 4. what runs the steps: optionally compiled, wrapped for data parallelism; the bare
        #    `self.model` shares its parameters and is what checkpoints store
        self.compiled = torch.compile(self.model) if c.compile else self.model
        self.parallel = wrap_model(self.compiled, ctx, device)
        self.global_batch_tokens = ctx.world_size * c.batch_size * c.grad_accum_steps * c.context_length

    # ---- one optimizer step ------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 compute over float32 master weights, or plain float32."""
        if self.config.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, lr: float) -> float:
        """Accumulate gradients over the micro-batches, then clip and step. Returns the loss averaged over
        all processes (NaN/inf is reported before the step, so the weights never take a bad update)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        steps = self.config.grad_accum_steps
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(steps):
            x, y = self.sampler.next_batch(self.device)
            # DDP averages gradients across processes only on the last micro-batch's backward
            with sync_context(self.parallel, self.ctx, sync=micro_step == steps - 1):
                with self.autocast():
                    loss = self.loss_fn(self.parallel(x), y) / steps
                loss.backward()
            loss_sum += loss.detach()
        loss_value = all_reduce_mean(loss_sum.item(), self.ctx, self.device)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(self._divergence_message(loss_value, lr))
        if self.config.grad_clip > 0:
            gradient_clipping(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def _divergence_message(self, loss: float, lr: float) -> str:
        kept = (f"{self.config.checkpoint_path} still holds iteration {self.saved_iteration}"
                if self.saved_iteration is not None else "no checkpoint was written")
        return (f"training diverged: loss is {loss} at iteration {self.iteration + 1} (lr {lr:.3g}); "
                f"stopped before that step, {kept}. "
                f"Try a lower --lr_max, longer --warmup_iters or --grad_clip 1")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches, averaged over all processes."""
        self.compiled.eval()
        losses = []
        for starts in self.val_starts:
            x, y = batch_windows(self.val_tokens, starts, self.config.context_length, self.device)
            with self.autocast():
                losses.append(self.loss_fn(self.compiled(x), y).float())
        self.compiled.train()
        return all_reduce_mean(torch.stack(losses).mean().item(), self.ctx, self.device)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a resumable checkpoint (process 0 only: all processes hold the same weights)."""
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
        names = [f.name for f in dataclasses.fields(ModelConfig)]
        differ = [name for name in names if getattr(theirs, name) != getattr(ours, name)]
        if differ:
            saved_values = ", ".join(f"{name} {getattr(theirs, name)}" for name in differ)
            flag_values = ", ".join(f"--{name} {getattr(ours, name)}" for name in differ)
            raise UserError(f"{flag}: {path} has {saved_values}, but the flags give {flag_values}")

    def _init_weights(self, path: Path) -> None:
        """Fine-tuning: take the weights of `path`, start a fresh optimizer, schedule and iteration count."""
        saved = read_checkpoint(path)
        if "model_config" not in saved:
            raise UserError(f"--init_from: {path} stores no model config")
        self._check_shape(saved, path, "--init_from")
        load_model_state(self.model, saved["model"], path)

    def _resume(self) -> None:
        """Load model, optimizer, RNG states and sampler position; every process loads the same file."""
        path = Path(self.config.checkpoint_path)
        if not path.is_file():
            raise UserError(f"--resume: no checkpoint at {path} (--checkpoint_path)")
        saved = read_checkpoint(path)
        if "sampler_state" not in saved:
            raise UserError(f"--resume: {path} holds no training state (was it written by minlm train?)")
        self._check_shape(saved, path, "--resume")
        self.iteration = restore_checkpoint(saved, self.model, self.optimizer, path)
        if self.iteration >= self.config.max_iters:
            raise UserError(f"--resume: {path} is already at iteration {self.iteration}; "
                            f"raise --max_iters (now {self.config.max_iters}) to train further")
        self.sampler.load_state(saved["sampler_state"])
        self.best_val_loss = saved["best_val_loss"] if saved["best_val_loss"] is not None else math.inf
        self.elapsed_before = saved["elapsed"]
        self.saved_iteration = self.iteration

    # ---- the loop ------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Each iteration: one optimizer step, then on their intervals a log line, a validation pass (which
        may save the best checkpoint) and a checkpoint; then stop if a signal asked to. The last iteration
        always logs, validates and saves."""
        c = self.config
        self.metrics = self._open_metrics()
        self._say(self._header())
        self.session_start = self.last_log_time = time.perf_counter()
        self.last_log_iteration = self.iteration
        stopped_by = ""
        try:
            with stop_requests() as stop, self._progress_bar() as self.bar:
                while self.iteration < c.max_iters and not stopped_by:
                    lr = get_lr_cosine_schedule(self.iteration, c.lr_max, c.lr_min, c.warmup_iters,
                                                c.max_iters)
                    loss = self.train_step(lr)
                    self.iteration += 1
                    self.bar.update()
                    last = self.iteration == c.max_iters
                    if self.iteration % c.log_interval == 0 or last:
                        self.log_training(loss, lr)
                    if self.iteration % c.eval_interval == 0 or last:
                        self.validate()
                    if self.iteration % c.checkpoint_interval == 0 or last:
                        self.checkpoint()
                    stopped_by = self._agreed_stop(stop)
            if stopped_by and self.saved_iteration != self.iteration:
                self.checkpoint()
        finally:
            if self.wandb_run is not None:
                self.wandb_run.finish()
        return self._finish(stopped_by)

    def log_training(self, loss: float, lr: float) -> None:
        now = time.perf_counter()
        tokens = (self.iteration - self.last_log_iteration) * self.global_batch_tokens
        rate = tokens / (now - self.last_log_time)
        self.last_log_time, self.last_log_iteration = now, self.iteration
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
        self._record({"iter": self.iteration, "loss": loss, "lr": lr, "tokens_per_s": rate})

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
        if stopped_by and self.ctx.is_main:  # said even when quiet: the user must learn where the work went
            print(f"{stopped_by}: stopped after iteration {self.iteration}; checkpoint saved to "
                  f"{c.checkpoint_path}; continue with the same flags plus --resume")
        self._say(f"training {'interrupted' if stopped_by else 'done'}:\n{summary(result)}")
        return result

    # ---- reporting ----------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training seconds so far, over all sessions of a resumed run."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def _open_metrics(self) -> MetricsLog | None:
        """metrics.jsonl on process 0; a fresh run warns before it replaces an earlier run's files."""
        c = self.config
        if not self.ctx.is_main:
            return None
        if not c.resume and Path(c.checkpoint_path).exists():
            self._say(f"note: replacing the earlier run in {c.checkpoint_path} (--resume would continue it)")
        return MetricsLog(c.run_path / "metrics.jsonl", resume_from=self.iteration if c.resume else None,
                          wandb_run=self.wandb_run)

    def _progress_bar(self) -> tqdm:
        return tqdm(total=self.config.max_iters, initial=self.iteration, unit="it", dynamic_ncols=True,
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

    def _agreed_stop(self, stop: StopRequest) -> str:
        """The signal's name if any process was asked to stop (all processes then stop together), else ''."""
        if not self.ctx.enabled:
            return stop.signal_name if stop.requested else ""
        anyone = all_reduce_mean(float(stop.requested), self.ctx, self.device) > 0
        return (stop.signal_name or "stop requested by another process") if anyone else ""

    def _header(self) -> str:
        c, ctx = self.config, self.ctx
        start = f"resuming at iteration {self.iteration}" if self.iteration else "starting"
        return (f"{start}: {self.model.num_parameters():,} parameters on {self.device} ({c.dtype}); "
                f"global batch {self.global_batch_tokens:,} tokens = {ctx.world_size} process(es) x "
                f"{c.batch_size} sequences x {c.grad_accum_steps} accumulation x {c.context_length} tokens; "
                f"{c.max_iters} iterations")

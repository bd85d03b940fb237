"""The one epoch loop for every task: AdamW, warm-up + cosine, bf16 autocast where native, metric
sums kept on the device (one host sync per epoch), a checkpoint per epoch, pre-emption by
SIGTERM/SIGUSR1, and a guard that stops a run whose loss is no longer finite."""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sweeper import checkpoint, records
from sweeper.config import Settings
from sweeper.tasks import Phase

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Outcome:
    status: str  # complete | preempted | diverged | stopped
    detail: dict[str, Any] = field(default_factory=dict)


class _Preemption:
    """Set by SIGTERM or SIGUSR1 (how SLURM pre-empts); the loop stops after the current step."""

    requested = False

    @classmethod
    @contextmanager
    def watch(cls) -> Iterator[None]:
        cls.requested = False

        def handler(signum: int, frame: Any) -> None:
            cls.requested = True

        sigs = [signal.SIGTERM, signal.SIGUSR1]
        try:
            old = [signal.signal(s, handler) for s in sigs]
        except ValueError:  # not the main thread (some launchers): signals stay as they are
            yield
            return
        try:
            yield
        finally:
            for s, h in zip(sigs, old):
                signal.signal(s, h)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases, norms, positions and the CLS vector do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim == 2 or p.ndim == 4], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.ndim not in (2, 4)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, fused=device.type == "cuda")


def native_bf16(device: torch.device) -> bool:
    """CUDA, or a CPU with bf16 units (AVX512-BF16 / AMX) that oneDNN uses."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """`auto` -> bf16 where the hardware has bf16 units: tensor cores, and on an AVX512-BF16 CPU
    a 1.68x faster ViT epoch than fp32 (README). Elsewhere bf16 is emulated and slower: fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_for(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    """bf16 autocast (no loss scaling needed) or full precision, as `resolve_precision` says."""
    if resolve_precision(device, precision) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, autocast: AbstractContextManager,
               label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the loss and logits, still on the device (no host sync)."""
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


class Trainer:
    def __init__(self, s: Settings, device: torch.device, run_dir: Path,
                 log: Callable[[dict[str, Any]], None], max_epochs: Optional[int] = None) -> None:
        """`max_epochs` stops each phase after that many epochs of its unchanged schedule
        (status `stopped`): the benchmark's "k epochs of the normal schedule"."""
        self.s, self.device, self.run_dir, self.log = s, device, run_dir, log
        self.max_epochs = max_epochs
        self.autocast = autocast_for(device, s.precision)

    def fit(self, phases: list[Phase]) -> Outcome:
        """Run the phases in order, resuming from the run dir's checkpoint if there is one."""
        state = checkpoint.load(self.run_dir / CHECKPOINT_FILE)
        start = (state["phase"], state["epoch"]) if state else (0, 0)
        self._drop_rows_after(start, [p.name for p in phases])
        with _Preemption.watch():
            for index, phase in enumerate(phases):
                if index < start[0]:
                    continue
                outcome = self._run_phase(index, phase, state if index == start[0] else None)
                if outcome.status != "complete":
                    return outcome
                if phase.on_end:
                    phase.on_end(self.run_dir)
        return Outcome("complete")

    def _drop_rows_after(self, start: tuple[int, int], names: list[str]) -> None:
        """Rows logged after the checkpoint was taken belong to work that will be redone."""
        rows = records.read_rows(self.run_dir)
        keep = [r for r in rows if (names.index(r["phase"]), int(r["epoch"])) <= start]
        if len(keep) != len(rows):
            records.write_rows(self.run_dir, keep)

    def _run_phase(self, index: int, phase: Phase, state: Optional[dict]) -> Outcome:
        s, device = self.s, self.device
        model = phase.model.to(device)
        if phase.frozen is not None:  # frozen from this phase on: the optimiser never sees it
            phase.frozen.requires_grad_(False)
        if device.type == "cuda":  # convolutions run faster on NHWC tensors with bf16
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, s, device)
        steps_per_epoch = len(phase.train)
        total = phase.epochs * steps_per_epoch
        warmup = min(total, round(s.warmup_epochs * steps_per_epoch))
        first_epoch, partial = 0, None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            phase.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            first_epoch, partial = state["epoch"], state.get("partial")
        step_model = torch.compile(model) if s.compile and device.type == "cuda" else model

        for epoch in range(first_epoch, phase.epochs):
            if self.max_epochs is not None and epoch - first_epoch >= self.max_epochs:
                return Outcome("stopped", {"phase": phase.name, "epoch": epoch})
            if partial:  # replay this epoch's draws from its start
                phase.generator.set_state(partial["generator"])
            epoch_start_rng = phase.generator.get_state()
            result = self._train_epoch(phase, model, step_model, optimizer, epoch, steps_per_epoch,
                                       total, warmup, partial)
            partial = None
            if result.status == "preempted":
                self._save(index, epoch, model, optimizer, phase, partial={
                    "generator": epoch_start_rng, **result.detail})
                return Outcome("preempted", {"phase": phase.name, "epoch": epoch + 1,
                                             "step": result.detail["step"]})
            row = result.detail["row"]
            row["test_loss"], row["test_acc"] = self.evaluate(step_model, phase.test)
            row["phase"] = phase.name
            records.append_row(self.run_dir, row)
            self.log(row)
            if result.status == "diverged":
                return Outcome("diverged", {"phase": phase.name, "epoch": epoch + 1,
                                            "step": result.detail["bad_step"]})
            self._save(index, epoch + 1, model, optimizer, phase)
        return Outcome("complete")

    def _train_epoch(self, phase: Phase, model: nn.Module, step_model: nn.Module,
                     optimizer: torch.optim.Optimizer, epoch: int, steps_per_epoch: int,
                     total: int, warmup: int, partial: Optional[dict]) -> Outcome:
        s, device = self.s, self.device
        model.train()
        if phase.frozen is not None:
            phase.frozen.eval()  # a linear probe keeps the encoder's batch-norm statistics
        zero = torch.zeros((), device=device)
        loss_sum, correct, bad_step = zero.clone(), zero.clone(), zero.clone() - 1
        seen, done, elapsed = 0, 0, 0.0
        if partial:
            loss_sum += partial["loss_sum"].to(device)
            correct += partial["correct"].to(device)
            seen, done, elapsed = partial["seen"], partial["step"], partial["elapsed"]
        progress = _Progress(epoch + 1, steps_per_epoch)
        start = time.perf_counter()
        for step, (x, y) in enumerate(phase.train):
            if step < done:  # resuming mid-epoch: replay the batch draws, skip the update
                continue
            if _Preemption.requested:
                detail = {"step": step, "loss_sum": loss_sum.cpu(), "correct": correct.cpu(),
                          "seen": seen, "elapsed": elapsed + time.perf_counter() - start}
                return Outcome("preempted", detail)
            global_step = epoch * steps_per_epoch + step
            lr = lr_at(global_step, total, warmup, s.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logits = train_step(step_model, optimizer, x, y, self.autocast, s.label_smoothing)
            detached = loss.detach()
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), global_step, bad_step)
            loss_sum += detached * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            progress.update(step + 1)
        progress.close()
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen  # the epoch's sync
        seconds = elapsed + time.perf_counter() - start
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "lr": lr,
               "epoch_seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)}
        first_bad = int(bad_step.item())
        if first_bad >= 0 or not math.isfinite(train_loss):
            return Outcome("diverged", {"row": row, "bad_step": first_bad})
        return Outcome("complete", {"row": row})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any) -> tuple[float, float]:
        """Mean cross-entropy (no smoothing) and accuracy over every test image."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        for x, y in batches:
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast:
                logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        return loss_sum.item() / seen, correct.item() / seen

    def _save(self, index: int, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
              phase: Phase, partial: Optional[dict] = None) -> None:
        state = {
            "phase": index,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": phase.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if partial is not None:
            state["partial"] = partial
        checkpoint.atomic_save(state, self.run_dir / CHECKPOINT_FILE)


class _Progress:
    """A one-line progress bar within the epoch, drawn only on a terminal."""

    def __init__(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self.live = sys.stderr.isatty()
        self.every = max(1, steps // 50)

    def update(self, step: int) -> None:
        if self.live and (step % self.every == 0 or step == self.steps):
            filled = 30 * step // self.steps
            sys.stderr.write(f"\r  epoch {self.epoch} [{'#' * filled:<30}] {step}/{self.steps}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()

"""The one epoch loop for every task: AdamW, warm-up + cosine, bf16 autocast where native, metric
sums kept on the device (one host sync per epoch), checkpoints, pre-emption by signal, and a
guard that stops a run whose loss is no longer finite."""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sweeper import checkpoint, records
from sweeper.records import CHECKPOINT_FILE, Status
from sweeper.stop import STOP_SIGNALS
from sweeper.config import Settings
from sweeper.data.batches import epoch_seed
from sweeper.tasks import Phase

CHECKPOINT_VERSION = 2


Judge = Callable[[str, dict[str, Any]], bool]  # (phase, epoch's row) -> stop the run here


@dataclass
class Outcome:
    status: Status  # complete, preempted, diverged, stopped or pruned
    detail: dict[str, Any] = field(default_factory=dict)


class Preemption:
    """A run's stop signals: one is recorded in `caught`; the loop stops after the current step
    and checkpoints; the signals caught are then handed, in order, to the handlers that were
    there before (under submitit: SIGTERM to its bypass, SIGUSR2 to its checkpoint-and-requeue).
    One instance per run, passed to its trainer."""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.previous: dict[int, Any] = {}
        self.watching = False

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Catch stop signals inside the block. Nested, the outer block keeps watching: the run
        watches until its files are written and handed off, so a signal landing just after the
        training loop (submitit sends TERM, then USR2) is caught too, not handled mid-write."""
        if self.watching:
            yield
            return
        self.caught = []

        def handler(signum: int, frame: Any) -> None:
            self.caught.append(signum)

        try:
            self.previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread (some launchers): signals stay as they are
            self.previous = {}
            yield
            return
        self.watching = True
        try:
            yield
        finally:
            self.watching = False
            for s, h in self.previous.items():
                signal.signal(s, h)

    def hand_off(self) -> None:
        """Give each caught signal to the earlier Python handler, if there was one. Call once
        the run's files are written: submitit's requeues the job and exits the process. A stop
        signal arriving meanwhile is ignored (the run is already saved): SLURM's own time-limit
        warning, which may come up to a minute early, would otherwise re-enter submitit's
        handler mid-dump and fail it."""
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in self.previous}
        try:
            for signum in dict.fromkeys(self.caught):
                previous = self.previous.get(signum)
                # Python's own Ctrl-C handler would only raise KeyboardInterrupt into this run
                if callable(previous) and previous is not signal.default_int_handler:
                    previous(signum, None)
        finally:
            for s, h in ignored.items():
                signal.signal(s, h)


@dataclass
class Position:
    """Where a run stands: the phase, the epochs done in it, the steps done in the next one."""

    phase: int = 0
    epoch: int = 0
    step: int = 0


@dataclass
class EpochSums:
    """An epoch's figures so far, kept across a pre-emption mid-epoch."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class EpochResult:
    row: dict[str, Any]  # metrics.csv's training figures of the epoch (empty when stopped)
    bad_step: int = -1  # the first step whose loss was not finite, or -1
    stopped: Optional[tuple[Position, EpochSums]] = None  # where a stop signal left it


@dataclass
class Evaluation:
    loss: float
    acc: float
    confusion: torch.Tensor  # rows: true class, columns: predicted
    tta_loss: Optional[float] = None  # with flip TTA: each image's logits averaged with its mirror's
    tta_acc: Optional[float] = None
    translate_loss: Optional[float] = None  # with tta=flip_translate: airbench's six views
    translate_acc: Optional[float] = None


def read_position(state: dict) -> tuple[Position, EpochSums]:
    """A checkpoint's `position` (cursor and sums in one flat dict, as `_save` writes it)."""
    found = state["position"]
    cursor = {k: found[k] for k in Position.__dataclass_fields__ if k in found}
    sums = {k: found[k] for k in EpochSums.__dataclass_fields__ if k in found}
    if set(found) - set(cursor) - set(sums):
        raise TypeError(f"unknown position keys {sorted(set(found) - set(cursor) - set(sums))}")
    return Position(**cursor), EpochSums(**sums)


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str = "cosine") -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine or linear decay to zero at
    `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases, norms, positions and the CLS vector do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim == 2 or p.ndim == 4], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.ndim not in (2, 4)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, fused=device.type == "cuda")


def native_bf16(device: torch.device) -> bool:
    """bf16 units in hardware: a CUDA card that does not merely emulate bf16 (Ampere and
    later), or a CPU with AVX512-BF16 / AMX that oneDNN uses."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """`auto` -> bf16 where the hardware has bf16 units: tensor cores, and on an AVX512-BF16 CPU
    a 1.68x faster ViT epoch than fp32 (README). Elsewhere bf16 is emulated and slower: fp32.
    A forced bf16 runs where bf16 works at all (emulated if need be), else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32"
    return precision


def precision_warning(device: torch.device, precision: str) -> Optional[str]:
    """One line when a forced precision is not what runs well, or not what runs at all."""
    if precision != "bf16" or native_bf16(device):
        return None
    if resolve_precision(device, precision) == "fp32":
        return f"warning: precision=bf16 is not supported on {device}: running fp32"
    return f"warning: precision=bf16 is emulated on {device} (slow): precision=auto picks fp32 here"


def autocast_for(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    """bf16 autocast (no loss scaling needed) or full precision, as `resolve_precision` says."""
    if resolve_precision(device, precision) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def configure_backends(device: torch.device) -> dict[str, Any]:
    """CUDA: cuDNN autotuning (every batch but the last has one shape) and TF32 tensor cores
    for fp32 matmuls and convolutions. Returns what was set, for summary.json."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {"cudnn_benchmark": True, "tf32": True}


def uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, autocast: AbstractContextManager, label_smoothing: float,
               grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the loss and logits, still on the device (no host sync).
    `y` is class indices, or (N, classes) probabilities where Mixup/CutMix mixed the images."""
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:  # the norm stays on the device: no sync
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()
    return loss, logits


class Trainer:
    def __init__(self, s: Settings, device: torch.device, run_dir: Path,
                 log: Callable[[dict[str, Any]], None], max_epochs: Optional[int] = None,
                 judge: Optional[Judge] = None, preemption: Optional[Preemption] = None) -> None:
        """`max_epochs` stops each phase after that many epochs of its unchanged schedule
        (status `stopped`): the benchmark's "k epochs of the normal schedule". `judge` sees
        each epoch's row and may end the run there (status `pruned`: a search's pruner).
        `preemption`: the run's stop signals (the run hands them off once its files are written)."""
        self.s, self.device, self.run_dir, self.log = s, device, run_dir, log
        self.preemption = preemption or Preemption()
        self.max_epochs, self.judge = max_epochs, judge
        self.precision = resolve_precision(device, s.precision)
        self.autocast = autocast_for(device, s.precision)
        self.last_save = time.monotonic()
        self.history: list[dict[str, Any]] = []  # where each stretch of the run ran
        self.confusions: dict[str, torch.Tensor] = {}  # phase -> its last evaluation's confusion

    def fit(self, phases: list[Phase]) -> Outcome:
        """Run the phases in order, resuming from the run dir's checkpoint if there is one."""
        path = self.run_dir / CHECKPOINT_FILE
        state = checkpoint.load(path, CHECKPOINT_VERSION)
        misfit = state and _misfit(state, phases)
        if misfit:
            checkpoint.set_aside(path, misfit)
            state = None
        at, sums = read_position(state) if state else (Position(), EpochSums())
        self.history = list(state.get("history", [])) if state else []
        self.confusions = dict(state.get("confusions", {})) if state else {}
        self._trim_rows(at, phases)
        with self.preemption.watch():
            for index in range(at.phase, len(phases)):
                phase = phases[index]
                resumed = state if index == at.phase else None
                start = (at, sums) if index == at.phase else (Position(phase=index), EpochSums())
                outcome = self._run_phase(phase, *start, resumed)
                if outcome.status != Status.COMPLETE:
                    return outcome
                if phase.on_end:
                    phase.on_end(self.run_dir)
        return Outcome(Status.COMPLETE)

    def _trim_rows(self, at: Position, phases: list[Phase]) -> None:
        """metrics.csv as of the checkpoint: rows logged after it belong to work that will be
        redone, and a line torn by a kill is dropped. Rows up to the checkpoint that cannot be
        read are RunFileError: they cannot be trained again without starting afresh."""
        if not (self.run_dir / records.METRICS_FILE).exists():
            return
        rows, error = records.read_metrics(self.run_dir)
        names = [p.name for p in phases]
        keep = [r for r in rows if (names.index(r["phase"]) if r["phase"] in names else len(names),
                                    r["epoch"]) <= (at.phase, at.epoch)]
        needed = sum(p.epochs for p in phases[:at.phase]) + at.epoch
        if len(keep) < needed:
            raise error or records.RunFileError(
                f"{records.METRICS_FILE} holds {len(keep)} of the {needed} epochs its checkpoint "
                f"has trained")
        records.write_rows(self.run_dir, keep)

    def _resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params' device
        was = state.get("device")
        now = self.device.type
        if was and was != now:
            print(f"resuming on {now} a checkpoint written on {was}: model and optimiser state "
                  f"moved across; the batch order is the same, drawn from (seed, phase, epoch)",
                  flush=True)

    def _run_phase(self, phase: Phase, at: Position, sums: EpochSums,
                   state: Optional[dict]) -> Outcome:
        s, device = self.s, self.device
        model = phase.model.to(device)
        if phase.frozen is not None:  # frozen from this phase on: the optimiser never sees it
            phase.frozen.requires_grad_(False)
        channels_last = device.type == "cuda" and uses_convolutions(model)
        if channels_last:  # convolutions run faster on NHWC tensors with bf16
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, s, device)
        if state is not None:
            self._resume(model, optimizer, state)
        step_model = compile_model(model) if s.compile else model
        self.history.append({"phase": phase.name, "epoch": at.epoch + 1, "step": at.step,
                             "device": device.type, "precision": self.precision,
                             "compile": s.compile})
        steps = len(phase.train)
        total = phase.epochs * steps
        warmup = min(total, round(s.warmup_epochs * steps))

        for epoch in range(at.epoch, phase.epochs):
            if self.max_epochs is not None and epoch - at.epoch >= self.max_epochs:
                return Outcome(Status.STOPPED, {"phase": phase.name, "epoch": epoch})
            part = (at, sums) if epoch == at.epoch else (Position(at.phase, epoch), EpochSums())
            result = self._train_epoch(phase, model, step_model, optimizer, *part, total, warmup,
                                       channels_last)
            if result.stopped is not None:
                self._save(*result.stopped, model, optimizer)
                return Outcome(Status.PREEMPTED, {"phase": phase.name, "epoch": epoch + 1,
                                                  "step": result.stopped[0].step,
                                                  "signal": self.preemption.caught[-1]})
            row, bad_step = result.row, result.bad_step
            test = self.evaluate(step_model, phase.test, channels_last, s.tta, phase.mirror_classes)
            row["test_loss"], row["test_acc"] = test.loss, test.acc
            if test.tta_acc is not None:
                row["tta_test_loss"], row["tta_test_acc"] = test.tta_loss, test.tta_acc
            if test.translate_acc is not None:
                row["tta_translate_test_loss"] = test.translate_loss
                row["tta_translate_test_acc"] = test.translate_acc
            self.confusions[phase.name] = test.confusion
            if phase.val is not None:
                val = self.evaluate(step_model, phase.val, channels_last)
                row["val_loss"], row["val_acc"] = val.loss, val.acc
            row["phase"] = phase.name
            records.append_row(self.run_dir, row)
            self.log(row)
            if bad_step >= 0 or not all(map(math.isfinite, (row["train_loss"], row["test_loss"]))):
                return Outcome(Status.DIVERGED, {"phase": phase.name, "epoch": epoch + 1,
                                            "step": bad_step if bad_step >= 0 else None})
            if self.judge is not None and self.judge(phase.name, row) and epoch + 1 < phase.epochs:
                return Outcome(Status.PRUNED, {"phase": phase.name, "epoch": epoch + 1})
            done = Position(phase=at.phase, epoch=epoch + 1)
            if epoch + 1 == phase.epochs or time.monotonic() - self.last_save >= s.checkpoint_every:
                self._save(done, EpochSums(), model, optimizer)
        return Outcome(Status.COMPLETE)

    def _train_epoch(self, phase: Phase, model: nn.Module, step_model: nn.Module,
                     optimizer: torch.optim.Optimizer, at: Position, sums: EpochSums, total: int,
                     warmup: int, channels_last: bool) -> EpochResult:
        """One epoch from step `at.step`, its figures so far `sums`."""
        s, device = self.s, self.device
        model.train()
        if phase.frozen is not None:
            phase.frozen.eval()  # a linear probe keeps the encoder's batch-norm statistics
        steps = len(phase.train)
        loss_sum = torch.tensor(sums.loss_sum, device=device)
        correct = torch.tensor(sums.correct, device=device)
        bad_step = torch.tensor(-1, device=device)
        seen, lr = sums.seen, s.lr
        progress = _Progress(at.epoch + 1, steps)
        start = time.perf_counter()
        for step, (x, y) in enumerate(phase.train.epoch(at.epoch, at.step), start=at.step):
            if self.preemption.caught:
                return EpochResult({}, stopped=(
                    Position(at.phase, at.epoch, step),
                    EpochSums(loss_sum.item(), correct.item(), seen,
                              sums.seconds + time.perf_counter() - start)))
            global_step = at.epoch * steps + step
            lr = lr_at(global_step, total, warmup, s.lr, s.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # The model's own draws (stochastic depth) come from the step: a resumed run repeats them.
            torch.manual_seed(epoch_seed(s.seed, f"{phase.name}:model", global_step))
            loss, logits = train_step(step_model, optimizer, x, y, self.autocast, s.label_smoothing,
                                      s.grad_clip)
            detached = loss.detach()
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), global_step, bad_step)
            loss_sum += detached * len(y)
            correct += (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()
            seen += len(y)
            progress.update(step + 1)
        progress.close()
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen  # the epoch's sync
        seconds = sums.seconds + time.perf_counter() - start
        row = {"epoch": at.epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "lr": lr,
               "epoch_seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)}
        return EpochResult(row, int(bad_step.item()))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, channels_last: bool = False,
                 tta: str = "none", mirror_classes: Optional[list[int]] = None) -> Evaluation:
        """Mean cross-entropy (no smoothing), accuracy, and the confusion matrix (rows: true
        class, columns: predicted; counted on the device) over every image. With `tta` "flip",
        also the figures of each image's logits averaged with its mirror image's, whose class is
        `mirror_classes[c]` for an image of class c (None: the same class); with
        "flip_translate", those too and airbench's: that average, averaged with the mean of the
        same pair's for the image shifted one pixel up-left and one down-right (reflected edge)."""
        model.eval()
        sums = torch.zeros({"none": 1, "flip": 3, "flip_translate": 5}[tta], device=self.device)
        counts: Optional[torch.Tensor] = None
        seen = 0

        def with_mirror(view: torch.Tensor, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
            with self.autocast:
                if logits is None:
                    logits = model(view).float()
                mirrored = model(view.flip(-1)).float()
            if mirror_classes is not None:
                mirrored = mirrored[:, mirror_classes]
            return (logits + mirrored) / 2

        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast:
                logits = model(x).float()
            classes = logits.shape[1]
            terms = [F.cross_entropy(logits, y, reduction="sum")]
            averages = []
            if tta != "none":
                averages.append(with_mirror(x, logits))
            if tta == "flip_translate":
                h, w = x.shape[-2:]
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [with_mirror(padded[..., i:i + h, i:i + w]) for i in (0, 2)]
                averages.append((averages[0] + (shifted[0] + shifted[1]) / 2) / 2)
            for average in averages:
                terms += [F.cross_entropy(average, y, reduction="sum"), (average.argmax(1) == y).sum()]
            sums += torch.stack(terms)
            pairs = torch.bincount(y * classes + logits.argmax(1), minlength=classes * classes)
            counts = pairs if counts is None else counts + pairs
            seen += len(y)
        confusion = counts.view(classes, classes).cpu()
        loss, *tta_figures = (total / seen for total in sums.tolist())
        return Evaluation(loss, confusion.diagonal().sum().item() / seen, confusion, *tta_figures)

    def _save(self, at: Position, sums: EpochSums, model: nn.Module,
              optimizer: torch.optim.Optimizer) -> None:
        checkpoint.atomic_save({
            "version": CHECKPOINT_VERSION,
            "position": {**asdict(at), **asdict(sums)},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "device": self.device.type,
            "precision": self.precision,
            "history": self.history,
            "confusions": self.confusions,
        }, self.run_dir / CHECKPOINT_FILE)
        self.last_save = time.monotonic()


def _misfit(state: dict, phases: list[Phase]) -> Optional[str]:
    """Why a readable checkpoint is not one of this run's (another model's weights, or a
    position past the epochs this run plans), or None."""
    try:
        at, _ = read_position(state)
    except (KeyError, TypeError, AttributeError):
        return "holds no position this trainer writes"
    planned = phases[at.phase].epochs if 0 <= at.phase < len(phases) else -1
    if not 0 <= at.epoch <= planned or (at.step > 0 and at.epoch == planned):
        return (f"stands at epoch {at.epoch} of phase {at.phase}, past what this run plans "
                f"({', '.join(f'{p.name}: {p.epochs}' for p in phases)} epochs)")
    ours = phases[at.phase].model.state_dict()
    theirs = state.get("model", {})
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs or ours[key].shape != theirs[key].shape:
            return f"holds another model's weights ({key})"
    return None


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile with dynamo's caches reset first: a process that runs many runs (a joblib
    worker) would otherwise pile up graphs until dynamo's recompile limit, then silently fall
    back to eager. Shapes per run: full and last batch, train and eval."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # so compiled_graphs() counts this run's graphs only
    return torch.compile(model)


def compiled_graphs() -> int:
    """Graphs dynamo compiled since its last reset: 0 means the model ran eager."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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

"""Benchmarks that print the reference's figure beside ours, from the same run.

    python -m sweeper.bench accuracy [--epochs K] [OVERRIDES...]
        runs the experiment the overrides select for K epochs of its normal schedule and prints
        test accuracy per epoch next to the assignment report's figure at the same epoch.

    python -m sweeper.bench speed [--device D] [--precision P] [--batch-size B] [--steps S]
                                  [--windows W]
        training throughput (forward + backward + AdamW step, after warm-up, median of W timed
        windows of S steps) of our models, interleaved with the references: timm's
        VisionTransformer of the identical shape, and the tutorial input pipeline (torchvision
        dataset of PIL images, RandomCrop + flip + ToTensor + Normalize, DataLoader workers);
        and the ViT's two attention paths (written out, scaled_dot_product_attention) against
        each other at patch 4 (4 and 12 heads) and at patch 4 with half overlap (226 tokens,
        4 heads), in fp32, and in bf16 where the device has bf16 units or --precision bf16 asks.

    python -m sweeper.bench sweep [--runs N] [--jobs J] [--out DIR] [OVERRIDES...]
        the same N runs (seed=0..N-1 of the overrides' experiment) as a sweep, twice: one run at
        a time on all threads (the basic launcher), then J joblib workers of threads/J each;
        prints the wall time and the images per second summed over runs training at once.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sweeper.config import Settings, composition_error, register_configs, validate
from sweeper.data.batches import MEAN, STD, Batches
from sweeper.errors import ConfigError, OneLineParser, SweeperError
from sweeper.models import Classifier
from sweeper.models.vit import Attention, ViT, ViTConfig, written_out_attention
from sweeper.records import METRICS_FILE
from sweeper.reference import seed_rows, vit_curve
from sweeper.rundir import run_name
from sweeper.run import describe, execute, pick_device
from sweeper.train import autocast_for, resolve_precision, train_step, uses_convolutions

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def reference_rows(s: Settings) -> dict[tuple[str, int], dict[str, str]]:
    """The report's rows for the same experiment, keyed by (our phase name, epoch)."""
    if s.task.name == "classify" and s.model.name == "vit":
        m = s.model
        return {("train", int(r["epoch"])): r for r in vit_curve(m.patch, m.heads, m.overlap, m.cls_layer)}
    if s.task.name in ("rotation_pretrain", "rotation_probe"):
        phases = {"rotation_pretrain": "pretrain", "finetune": "finetune"}
        return {(phases[r["task"]], int(r["epoch"])): r for r in seed_rows() if r["task"] in phases}
    return {}


def _fmt(value: str | float | None) -> str:
    return "—" if value in (None, "") else f"{float(value):.4f}"


def accuracy(args: argparse.Namespace) -> int:
    try:
        cfg = compose_config(args.overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None
    s = validate(cfg)
    run_dir = Path(args.out) / f"accuracy-{run_name(args.overrides)}-k{args.epochs}"
    if run_dir.exists():  # a benchmark starts fresh; the old run is kept beside it
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    summary = execute(s, run_dir, cfg, args.overrides, max_epochs=args.epochs)
    ref = reference_rows(s)
    with open(run_dir / METRICS_FILE, newline="") as f:
        ours = list(csv.DictReader(f))
    print(f"\naccuracy after {args.epochs} epoch(s) of the normal schedule | "
          f"device: {summary['device']}, {summary['precision']} | data: {s.data.name} | "
          f"run dir: {run_dir}")
    print("| phase | epoch | our test acc | report test acc | our train acc | report train acc | our s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for row in ours:
        r = ref.get((row["phase"], int(row["epoch"])), {})
        print(f"| {row['phase']} | {row['epoch']} | {_fmt(row['test_acc'])} | {_fmt(r.get('test_acc'))} "
              f"| {_fmt(row['train_acc'])} | {_fmt(r.get('train_acc'))} | {float(row['epoch_seconds']):.1f} |")
    final = {k[0]: v for k, v in sorted(ref.items(), key=lambda kv: kv[0][1])}
    for phase, r in final.items():
        print(f"report's final ({phase}, epoch {r['epoch']}): test acc {_fmt(r.get('test_acc'))}, "
              f"train acc {_fmt(r.get('train_acc'))}")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls, synchronised at both ends."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fns: dict[str, Callable[[], None]], images_per_call: int, windows: int,
                 steps: int, device: torch.device) -> dict[str, float]:
    """Median images/s of each function, windows taken in turn so drift hits all alike."""
    for fn in fns.values():  # warm-up: allocator, cuDNN autotuning, compilation
        _timed(fn, 3, device)
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(windows):
        for name, fn in fns.items():
            seconds[name].append(_timed(fn, steps, device))
    return {k: images_per_call * steps / statistics.median(v) for k, v in seconds.items()}


def _step_fn(model: nn.Module, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, precision: str) -> Callable[[], None]:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = autocast_for(device, precision)
    convs = device.type == "cuda" and uses_convolutions(model)

    def step() -> None:
        x, y = batch()
        train_step(model, optimizer, x.contiguous(memory_format=torch.channels_last) if convs else x,
                   y, autocast, 0.1)

    return step


def _with_attention(model: nn.Module, path: str) -> nn.Module:
    """The model with every attention block fixed on one path ("written" or "sdpa")."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.path = path
    return model


def _rule_writes_out(device: torch.device, precision: str) -> bool:
    with autocast_for(device, precision):
        return written_out_attention(torch.empty(0, device=device))


def _timm_vit(cfg: ViTConfig) -> nn.Module | None:
    """timm's VisionTransformer with our shape (non-overlapping patches only), or None."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    if cfg.overlap != "none":
        return None
    return VisionTransformer(img_size=32, patch_size=cfg.patch, num_classes=10, embed_dim=cfg.dim,
                             depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                             class_token=True, global_pool="token")


class _PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a PIL image through the transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from torchvision import transforms as T

        self.x, self.y = x.permute(0, 2, 3, 1).numpy(), y.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def _cycle(make: Callable[[], Iterator]) -> Callable[[], Any]:
    """An endless next() over fresh iterators (fresh epochs)."""
    state = {"it": make()}

    def step():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = make()
            return next(state["it"])

    return step


def _progress(row: tuple[str, float, float | None, str]) -> None:
    ref = f", reference {row[2]:,.0f}" if row[2] else ""
    print(f"  {row[0]}: ours {row[1]:,.0f} images/s{ref}", flush=True)


def speed(args: argparse.Namespace) -> int:
    from sweeper.data.sources import synthetic
    from sweeper.models.resnet import ResNet18

    device = pick_device(args.device)
    precision = resolve_precision(device, args.precision)
    bs = args.batch_size or (256 if device.type == "cuda" else 64)
    workers = args.workers if args.workers is not None else (os.cpu_count() if device.type == "cuda" else 2)
    torch.manual_seed(0)
    images = synthetic(10_000, 10)  # throughput does not depend on what the pixels show
    x_dev, y_dev = images.x_train.to(device), images.y_train.to(device)
    feed, epochs = Batches(x_dev, y_dev, bs, seed=0, stream="bench"), iter(range(10**9))
    ours_batches = _cycle(lambda: feed.epoch(next(epochs)))
    fixed = (torch.randn(bs, 3, 32, 32, device=device), torch.randint(0, 10, (bs,), device=device))
    rows: list[tuple[str, float, float | None, str]] = []
    print(f"device: {describe(device)} | {precision} | batch size {bs} | "
          f"{args.windows} windows x {args.steps} steps | "
          f"torch {torch.__version__}", flush=True)

    for patch in (4, 8, 16):
        for overlap in ("none", "half"):
            cfg = ViTConfig(patch=patch, overlap=overlap)
            fns = {"ours": _step_fn(Classifier(ViT(cfg), 10), lambda: fixed, device, precision)}
            ref = _timm_vit(cfg)
            if ref is not None:
                fns["timm"] = _step_fn(ref, lambda: fixed, device, precision)
            rate = _interleaved(fns, bs, args.windows, args.steps, device)
            what = "timm VisionTransformer, same shape" if ref else "none: timm has no overlapping patches"
            rows.append((f"ViT patch {patch}, overlap {overlap}: train step", rate["ours"],
                         rate.get("timm"), what))
            _progress(rows[-1])
    # Emulated bf16 (no bf16 units) ran 22x slower than fp32 on an AVX2 AMD EPYC (README): its
    # rows would take most of the benchmark to measure a precision `auto` never picks there.
    attention_precisions = ["fp32"]
    if "bf16" in (precision, resolve_precision(device, "auto")):
        attention_precisions.append("bf16")
    else:
        print(f"  attention paths in bf16: not measured: this {device.type} has no bf16 units and "
              f"precision=auto runs fp32 there (--precision bf16 measures it)", flush=True)
    # 65 tokens with 4 and 12 heads, and 226 (half-overlapping patches): the longest sequence
    for cfg in (ViTConfig(heads=4), ViTConfig(heads=12), ViTConfig(heads=4, overlap="half")):
        shape = f"patch 4{', overlap half' if cfg.overlap == 'half' else ''}, {cfg.heads} heads"
        for path_precision in attention_precisions:
            fns = {path: _step_fn(_with_attention(Classifier(ViT(cfg), 10), path),
                                  lambda: fixed, device, path_precision)
                   for path in ("written", "sdpa")}
            rate = _interleaved(fns, bs, args.windows, args.steps, device)
            chosen = "written-out" if _rule_writes_out(device, path_precision) else "SDPA"
            rows.append((f"attention written out, ViT {shape}, {path_precision}",
                         rate["written"], rate["sdpa"],
                         f"scaled_dot_product_attention; the model takes {chosen} here"))
            _progress(rows[-1])
    for stem in ("cifar", "imagenet"):
        resnet = _step_fn(Classifier(ResNet18(stem), 10), lambda: fixed, device, precision)
        rate = _interleaved({"ours": resnet}, bs, args.windows, args.steps, device)
        rows.append((f"ResNet-18 stem={stem}: train step", rate["ours"], None, ""))
        _progress(rows[-1])

    loader = torch.utils.data.DataLoader(_PILImages(images.x_train, images.y_train), batch_size=bs,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    ref_batches = _cycle(lambda: iter(loader))

    def ref_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = ref_batches()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    # Long windows: the DataLoader's workers refill their prefetch queue while ours is timed,
    # which a short window would let dominate.
    rate = _interleaved({"ours": ours_batches, "ref": ref_batch}, bs,
                        args.windows, args.pipeline_steps, device)
    rows.append(("input pipeline alone (index, crop, flip, normalise)", rate["ours"], rate["ref"],
                 f"torchvision + PIL transforms, DataLoader, {workers} workers"))
    _progress(rows[-1])
    baseline = ViTConfig()
    rate = _interleaved({
        "ours": _step_fn(Classifier(ViT(baseline), 10), ours_batches, device, precision),
        "ref": _step_fn(Classifier(ViT(baseline), 10), ref_batch, device, precision),
    }, bs, args.windows, args.steps, device)
    rows.append(("epoch: pipeline + baseline ViT step", rate["ours"], rate["ref"],
                 f"same model fed by the DataLoader ({workers} workers)"))

    print("\n| measurement | ours (images/s) | reference (images/s) | ours / reference | reference |")
    print("|---|---|---|---|---|")
    for name, ours, ref, what in rows:
        ratio = f"{ours / ref:.2f}x" if ref else "—"
        ref_text = f"{ref:,.0f}" if ref else "—"
        print(f"| {name} | {ours:,.0f} | {ref_text} | {ratio} | {what or '—'} |")
    print(f"\nepoch of 50,000 images at these rates: ours {50_000 / rows[-1][1]:.1f} s, "
          f"reference {50_000 / rows[-1][2]:.1f} s ({describe(device)})")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: a positive integer")
    return value


def sweep(args: argparse.Namespace) -> int:
    """One sweep, launched both ways, in fresh folders: what a CPU user should pick."""
    import shutil
    import subprocess

    out = Path(args.out).resolve()
    seeds = "seed=" + ",".join(str(i) for i in range(args.runs))
    modes = {"one at a time, all threads": (1, []),
             f"{args.jobs} joblib workers": (args.jobs, ["hydra/launcher=joblib",
                                                        f"hydra.launcher.n_jobs={args.jobs}"])}
    print(f"{args.runs} runs: {' '.join(args.overrides) or 'the default experiment'} | "
          f"{os.cpu_count()} CPUs | torch {torch.__version__}", flush=True)
    results = []
    for (name, (at_once, launcher)), folder in zip(modes.items(), ("serial", "joblib")):
        sweep_dir = out / folder
        shutil.rmtree(sweep_dir, ignore_errors=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sweeper", *args.overrides, seeds, *launcher,
                               f"hydra.sweep.dir={sweep_dir}", "-m"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise ConfigError(f"the sweep ({name}) failed: "
                              f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
        rates = [float(row["images_per_s"]) for path in sorted(sweep_dir.glob(f"*/{METRICS_FILE}"))
                 for row in csv.DictReader(open(path))]
        summed = statistics.mean(rates) * at_once  # runs of a mode train side by side
        results.append(wall)
        print(f"  {name}: {wall:.1f} s wall, {summed:,.0f} images/s summed over the sweep", flush=True)
    print(f"  joblib workers / one at a time: {results[0] / results[1]:.2f}x by wall time", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m sweeper.bench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    acc = sub.add_parser("accuracy", help="test accuracy per epoch beside the report's")
    acc.add_argument("--epochs", type=_positive, default=2, help="epochs to run (schedule unchanged)")
    acc.add_argument("--out", default="outputs/bench", help="where the run directory goes")
    acc.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m sweeper")
    spd = sub.add_parser("speed", help="throughput of ours beside timm and a DataLoader pipeline")
    spd.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    spd.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                     help="as the config's precision key; the references run at the same one")
    spd.add_argument("--batch-size", type=_positive, help="default: 256 on CUDA, 64 on CPU")
    spd.add_argument("--steps", type=_positive, default=5, help="steps per timed window")
    spd.add_argument("--windows", type=_positive, default=3, help="timed windows per measurement")
    spd.add_argument("--pipeline-steps", type=_positive, default=100,
                     help="batches per timed window of the input pipelines alone")
    spd.add_argument("--workers", type=int, help="DataLoader workers (default: CPUs on CUDA, 2 on CPU)")
    swp = sub.add_parser("sweep", help="a sweep one run at a time vs joblib workers")
    swp.add_argument("--runs", type=_positive, default=4, help="runs in the sweep (seeds 0..N-1)")
    swp.add_argument("--jobs", type=_positive, default=os.cpu_count() or 1,
                     help="joblib workers (default: the CPUs)")
    swp.add_argument("--out", default="outputs/bench/sweep", help="where the two sweeps go")
    swp.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m sweeper")
    args = parser.parse_args(argv)
    commands = {"accuracy": accuracy, "speed": speed, "sweep": sweep}
    try:
        return commands[args.command](args)
    except SweeperError as err:  # the benchmark's one place where an error becomes a line
        return err.show()


if __name__ == "__main__":
    sys.exit(main())

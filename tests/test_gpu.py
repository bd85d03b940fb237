"""On a CUDA device only (`python -m pytest -m gpu`, about a minute): what the CPU tests cannot
reach. Skipped where no GPU is visible, so CPU-only CI passes them by skipping."""

import signal

import pytest
import torch

from helpers.commands import SLOW, TINY, metrics, ok, scores, start_and_signal, summary, sweeper
from sweeper.data.batches import Batches
from sweeper.train import native_bf16, resolve_precision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = ["device=cuda"]


def test_a_tiny_run_in_bf16_with_compile(tmp_path):
    ok(sweeper(*TINY, *CUDA, "precision=bf16", "compile=true", "epochs=2", f"hydra.run.dir={tmp_path}"))
    s = summary(tmp_path)
    assert s["status"] == "complete" and s["device"].startswith("cuda")
    assert s["compiled_graphs"] > 0 and s["tf32"] is True and s["cudnn_benchmark"] is True


def test_kill_and_resume_on_cuda_matches_an_uninterrupted_cuda_run(tmp_path):
    whole = tmp_path / "whole"
    ok(sweeper(*SLOW, *CUDA, "precision=fp32", f"hydra.run.dir={whole}"))
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL, [*CUDA, "precision=fp32"]).wait()
    ok(sweeper(*SLOW, *CUDA, "precision=fp32", f"hydra.run.dir={run_dir}"))
    assert [r["epoch"] for r in metrics(run_dir)] == ["1", "2", "3"]
    for a, b in zip(scores(run_dir), scores(whole)):  # cuDNN autotuning may pick other kernels
        assert a[:2] == b[:2] and abs(float(a[5]) - float(b[5])) < 0.05


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_moves_between_cpu_and_cuda(tmp_path, first, second):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL, [f"device={first}", "precision=fp32"]).wait()
    again = ok(sweeper(*SLOW, f"device={second}", "precision=fp32", f"hydra.run.dir={run_dir}"))
    assert f"resuming on {second} a checkpoint written on {first}" in again.stdout
    assert summary(run_dir)["status"] == "complete"
    assert [h["device"] for h in summary(run_dir)["history"]] == [first, second]


def test_augmentation_on_cuda_draws_exactly_what_it_draws_on_cpu():
    x = torch.randint(0, 255, (300, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(300)
    on_cpu = list(Batches(x, y, 64, seed=1, stream="train").epoch(0))
    on_gpu = list(Batches(x.cuda(), y.cuda(), 64, seed=1, stream="train").epoch(0))
    for (xc, yc), (xg, yg) in zip(on_cpu, on_gpu):
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu())


def test_precision_auto_follows_the_card():
    device = torch.device("cuda")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert native_bf16(device) == native
    assert resolve_precision(device, "auto") == ("bf16" if native else "fp32")

"""Data sources, the cache, the split and device batches, on tiny self-made data."""

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.files import make_tree, write_png
from sweeper.data import sources
from sweeper.data.batches import Batches, augment
from sweeper.data.sources import DataError
from sweeper.data.split import hold_out


def test_folder_reads_sorted_classes_and_labels(tmp_path):
    images = sources.folder(make_tree(tmp_path / "tree"), tmp_path / "cache")
    assert images.classes == ["ant", "bee", "cat"]
    assert images.x_train.shape == (9, 3, 32, 32) and images.x_train.dtype == torch.uint8
    assert images.x_test.shape == (9, 3, 32, 32)
    red_by_class = {"cat": 0, "ant": 50, "bee": 100}
    for x, y in zip(images.x_train, images.y_train):
        assert x[0, 0, 0].item() == red_by_class[images.classes[y]]


def test_folder_reads_a_tarball_like_the_directory(tmp_path):
    tree = make_tree(tmp_path / "tree")
    tar_path = tmp_path / "tree.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tree, arcname="cifar")
    from_dir = sources.folder(tree, tmp_path / "cache")
    from_tar = sources.folder(tar_path, tmp_path / "cache")
    assert torch.equal(from_dir.x_train, from_tar.x_train)
    assert torch.equal(from_dir.y_test, from_tar.y_test)


def test_cache_is_reused_then_invalidated_when_the_source_changes(tmp_path, monkeypatch):
    tree, cache = make_tree(tmp_path / "tree"), tmp_path / "cache"
    sources.folder(tree, cache)
    assert len(list(cache.glob("folder-*.pt"))) == 1

    decoded = []
    real = sources._decode_dir
    monkeypatch.setattr(sources, "_decode_dir", lambda root: decoded.append(root) or real(root))
    sources.folder(tree, cache)
    assert decoded == []  # served from the cache

    extra = tree / "train" / "ant" / "9.png"
    extra.write_bytes((tree / "train" / "ant" / "0.png").read_bytes())
    images = sources.folder(tree, cache)
    assert decoded == [tree] and len(images.x_train) == 10

    stamp = time.time() + 5
    os.utime(extra, (stamp, stamp))  # touched: the key changes again
    sources.folder(tree, cache)
    assert len(decoded) == 2


def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path):
    tree, cache = make_tree(tmp_path / "tree"), tmp_path / "cache"
    first = sources.folder(tree, cache)
    blob = next(cache.glob("folder-*.pt"))
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    again = sources.folder(tree, cache)
    assert torch.equal(first.x_train, again.x_train)
    assert torch.load(blob, weights_only=True)["key"]  # rewritten whole


def test_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        sources.folder(tmp_path / "empty", tmp_path / "cache")
    bad = make_tree(tmp_path / "big", per_class=1)
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), bad / "train" / "ant" / "0.png")
    with pytest.raises(DataError, match="must be 32x32"):
        sources.folder(bad, tmp_path / "cache")


def test_cifar10_reads_torchvisions_layout(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}))
    images = sources.cifar(tmp_path, sources.CIFAR10)
    assert images.x_train.shape == (20, 3, 32, 32) and images.x_test.shape == (3, 3, 32, 32)
    first = pickle.loads((base / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(images.x_train[0].flatten(), torch.from_numpy(first))


def test_cifar10_offline_says_what_to_do_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, **kwargs):  # as torchvision does: the folder first, then the download
        Path(root).mkdir(parents=True, exist_ok=True)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="point data.root at a local copy.*or use data=folder"):
        sources.cifar(tmp_path / "data", sources.CIFAR10)
    assert not (tmp_path / "data").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is theirs, empty or not
    with pytest.raises(DataError):
        sources.cifar(tmp_path / "mine", sources.CIFAR10)
    assert (tmp_path / "mine").is_dir()


def test_synthetic_is_deterministic_and_balanced():
    a, b = sources.synthetic(200, 50), sources.synthetic(200, 50)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.y_train.bincount().min() >= 15


def test_augment_keeps_shape_and_is_a_crop_or_flip_of_the_padded_image():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment(x, torch.tensor([0, 8]), torch.tensor([3, 5]), torch.tensor([False, True]))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    for i in range(2):
        windows = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    torch.testing.assert_close(out[0], padded[0, :, 0:32, 3:35])
    torch.testing.assert_close(out[1], padded[1, :, 8:40, 5:37].flip(2))


def test_batches_cover_every_image_once_per_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous()
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in Batches(x, y, 4, seed=0, stream="train").epoch(0)])
    assert sorted(seen.tolist()) == list(range(10))
    ordered = [yb.tolist() for _, yb in Batches(x, y, 4)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("val_size", [1, 5, 15, 1000])
def test_hold_out_keeps_exactly_the_images_asked_for_stratified(val_size):
    images = sources.synthetic(2000, 10)
    held = hold_out(images, val_size, seed=0)
    assert len(held.y_val) == val_size and len(held.y_train) == 2000 - val_size
    share = torch.bincount(images.y_train, minlength=10) * val_size / 2000
    assert (torch.bincount(held.y_val, minlength=10) - share).abs().max() < 1  # stratified


def test_a_one_image_validation_split_trains_and_is_evaluated(tmp_path):
    from helpers.commands import TINY, metrics, ok, sweeper

    ok(sweeper(*TINY, "data.val_size=1", f"hydra.run.dir={tmp_path / 'run'}"))
    (row,) = metrics(tmp_path / "run")
    assert float(row["val_acc"]) in (0.0, 1.0)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """A tiny file set in torchvision's cifar-100-python layout: fine label i % 100, coarse i % 20."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [i % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "meta").write_bytes(pickle.dumps({
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}))
    return root


@pytest.mark.parametrize("labels, classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_reads_torchvisions_layout_with_fine_or_coarse_labels(tmp_path, labels, classes):
    write_cifar100(tmp_path)
    images = sources.Cifar100Data(root=str(tmp_path), labels=labels).load()
    assert len(images.classes) == classes and images.classes[1] == f"{labels}1"
    assert images.x_train.shape == (200, 3, 32, 32) and images.x_test.shape == (100, 3, 32, 32)
    assert images.y_train.tolist()[:3] == [0, 1, 2] and int(images.y_train.max()) == classes - 1


def test_cifar100_refuses_a_pickle_that_would_run_code(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(
        b"cos\nsystem\n(S'echo hacked'\ntR.")  # protocol 0: os.system("echo hacked")
    with pytest.raises(DataError, match="is not a CIFAR-100 python batch.*refused"):
        sources.Cifar100Data(root=str(tmp_path)).load()


def test_cifar100_trains_and_its_report_stays_readable(tmp_path):
    import subprocess
    import sys

    from helpers.commands import ROOT, ok, summary, sweeper

    write_cifar100(tmp_path / "data", n_train=400)
    run = tmp_path / "runs" / "c100"
    ok(sweeper("data=cifar100", f"data.root={tmp_path / 'data'}", "epochs=1", "batch_size=64",
               "model.dim=24", "model.depth=1", "patch=8", f"hydra.run.dir={run}"))
    assert summary(run)["status"] == "complete"
    report = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "runs")],
                            cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert sum(line.startswith("| fine") for line in text.splitlines()) == 20  # of 100
    assert "the most frequent confusions" in text

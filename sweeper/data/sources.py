"""Image sources -> `ImageSet`: uint8 NCHW tensors and int64 labels for train and test.

The shipped `data=` options: torchvision's CIFAR-10 and CIFAR-100, an image folder (or .tar.gz
of one) decoded once into a cache, and small synthetic images for tests. Each is a
`DataOption` whose `load` returns an `ImageSet`; everything after this module sees tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sweeper.checkpoint import atomic_save
from sweeper.config import IMAGE_SIZE
from sweeper.errors import DataError, not_allowed
from sweeper.options import DataOption

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 2  # 2: images ordered by (class, file name) from a folder and a tarball alike


@dataclass
class ImageSet:
    x_train: torch.Tensor  # uint8 (N, 3, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    x_val: Optional[torch.Tensor] = None  # held out of the training set by `split.hold_out`
    y_val: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "ImageSet":
        return ImageSet(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                           for k, v in self.__dict__.items()})


CACHED = ("x_train", "y_train", "x_test", "y_test", "classes")  # what a source provides


@dataclass
class Cifar10Data(DataOption):
    """`data=cifar10`: torchvision's layout under `root`, downloaded there on first use."""

    name: str = "cifar10"
    root: str = "data"

    def load(self) -> ImageSet:
        return cifar(Path(self.root).expanduser(), CIFAR10)


@dataclass
class Cifar100Data(DataOption):
    """`data=cifar100`: torchvision's layout under `root`, downloaded there on first use;
    `labels`: the 100 fine classes, or the 20 coarse superclasses."""

    name: str = "cifar100"
    root: str = "data"
    labels: str = "fine"  # fine | coarse

    def check(self) -> None:
        if self.labels not in ("fine", "coarse"):
            raise not_allowed("data.labels", self.labels, "fine or coarse")

    def load(self) -> ImageSet:
        return cifar(Path(self.root).expanduser(), CIFAR100, self.labels)


@dataclass
class FolderData(DataOption):
    """`data=folder`: train/<class>/*.png|jpg and test/<class>/..., a folder or a tarball."""

    name: str = "folder"
    root: Optional[str] = None
    cache_dir: str = "~/.cache/sweeper"

    def check(self) -> None:
        allowed = "a directory (or .tar.gz of one) holding train/<class>/ and test/<class>/"
        if not self.root:
            raise not_allowed("data.root", self.root, allowed)
        path = Path(self.root).expanduser()
        if not path.exists():
            raise not_allowed("data.root", self.root, f"{allowed}; it does not exist")
        if path.is_dir() and not ((path / "train").is_dir() and (path / "test").is_dir()):
            raise not_allowed("data.root", self.root, f"{allowed}; train/ or test/ is missing")
        if path.is_file() and not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise not_allowed("data.root", self.root, allowed)

    def load(self) -> ImageSet:
        return folder(Path(self.root).expanduser(), Path(self.cache_dir).expanduser())


@dataclass
class SyntheticData(DataOption):
    """`data=synthetic`: small generated images with learnable classes, for tests."""

    name: str = "synthetic"
    n_train: int = 2000
    n_test: int = 400

    def check(self) -> None:
        for key in ("n_train", "n_test"):
            if getattr(self, key) < 10:
                raise not_allowed(f"data.{key}", getattr(self, key), "at least 10 images")

    def load(self) -> ImageSet:
        return synthetic(self.n_train, self.n_test)


@dataclass(frozen=True)
class CifarLayout:
    """One of the official python releases, as torchvision unpacks it."""

    name: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    dataset: str  # torchvision.datasets' class that downloads it

    def names_key(self, labels: str) -> bytes:
        return b"label_names" if self.name == "CIFAR-10" else f"{labels}_label_names".encode()

    def labels_key(self, labels: str) -> bytes:
        return b"labels" if self.name == "CIFAR-10" else f"{labels}_labels".encode()


CIFAR10 = CifarLayout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "batches.meta", "CIFAR10")
CIFAR100 = CifarLayout("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "CIFAR100")


def cifar(root: Path, layout: CifarLayout, labels: str = "fine") -> ImageSet:
    """Read torchvision's layout under `root`, downloading it there first if it is absent."""
    base = root / layout.folder
    if not all((base / name).is_file() for name in (*layout.train, layout.test, layout.meta)):
        import torchvision.datasets

        created = not root.exists()
        try:
            getattr(torchvision.datasets, layout.dataset)(str(root), train=True, download=True)
        except Exception as err:  # offline: urllib/socket errors of every kind
            if created:  # a failed first download leaves no empty data/ folder behind
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise DataError(
                f"{layout.name} is not under data.root={str(root)!r} and could not be downloaded "
                f"({type(err).__name__}): point data.root at a local copy in torchvision's "
                f"layout ({layout.folder}/), or use data=folder data.root=DIR_OR_TAR_GZ"
            ) from err
    meta = _unpickle(base / layout.meta, layout.name)
    key = layout.names_key(labels)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(c, (bytes, str)) for c in names):
        raise DataError(f"{base / layout.meta} is not {layout.name}'s {layout.meta} "
                        f"(no {key.decode()})")
    classes = [c.decode() if isinstance(c, bytes) else c for c in names]
    key = layout.labels_key(labels)
    x_train, y_train = _cifar_batches([base / name for name in layout.train], layout.name, key)
    x_test, y_test = _cifar_batches([base / layout.test], layout.name, key)
    images = ImageSet(x_train, y_train, x_test, y_test, classes)
    _check(images, str(root))
    return images


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's python batches hold (dicts, lists, bytes, str, ints and numpy
    arrays): a pickle naming any other callable is refused, so a crafted file runs no code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, dataset: str) -> Any:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any garbage: truncated, not a pickle, refused, wrong encoding
        raise DataError(f"{path} is not a {dataset} python batch ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None


def _cifar_batches(paths: list[Path], dataset: str,
                   key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        batch = _unpickle(path, dataset)
        data = batch.get(b"data") if isinstance(batch, dict) else None
        labels = batch.get(key) if isinstance(batch, dict) else None
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or not isinstance(labels, list)
                or len(labels) != len(data) or not all(type(v) is int for v in labels)):
            raise DataError(f"{path} is not a {dataset} python batch (expected uint8 data of "
                            f"shape (N, {3 * IMAGE_SIZE * IMAGE_SIZE}) and N integer labels)")
        xs.append(torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
        ys.append(torch.tensor(labels, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def synthetic(n_train: int, n_test: int, seed: int = 0) -> ImageSet:
    """Deterministic noisy images whose class decides a colour and a stripe orientation."""
    classes = [f"class{i}" for i in range(10)]
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.arange(n) % len(classes)
    y = y[torch.randperm(n, generator=g)]
    palette = torch.rand(len(classes), 3, 1, 1, generator=g)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    freq = 0.3 + 0.15 * (torch.arange(len(classes)) % 5)
    rows = torch.sin(freq[:, None, None] * coords[None, :, None]).expand(-1, -1, IMAGE_SIZE)
    stripes = torch.where((torch.arange(len(classes)) % 2 == 0)[:, None, None], rows, rows.mT)
    clean = 0.5 * palette + 0.25 * (1 + stripes[:, None])  # (classes, 3, H, W) in [0, 1]
    noisy = clean[y] + 0.15 * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    x = (noisy.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def folder(root: Path, cache_dir: Path) -> ImageSet:
    """Decode `root` (a directory or a tarball) once; later runs load the uint8 cache."""
    key = _source_key(root)
    cache = cache_dir / f"folder-{key}.pt"
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    images = _decode_tar(root) if root.is_file() else _decode_dir(root)
    try:
        _write_cache(cache, key, images)
    except OSError as err:  # the cache only saves time: say so once, and go on without it
        print(f"warning: cannot write the image cache {cache} ({err.strerror or err}); "
              f"set data.cache_dir to a writable folder to decode only once", file=sys.stderr,
              flush=True)
    return images


def _source_key(root: Path) -> str:
    """Changes whenever a file of the source is added, removed, resized or touched."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{root.resolve()}".encode())
    if root.is_file():
        st = root.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                st = path.stat()
                h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _read_cache(cache: Path, key: str) -> ImageSet | None:
    """The cached tensors, or None when absent, stale or corrupt (the caller rebuilds)."""
    if not cache.is_file():
        return None
    try:
        blob = torch.load(cache, weights_only=True)
        if blob["key"] != key:
            return None
        images = ImageSet(**{k: blob[k] for k in CACHED})
        _check(images, str(cache))
        return images
    except Exception:
        return None


def _write_cache(cache: Path, key: str, images: ImageSet) -> None:
    atomic_save({"key": key, **{k: getattr(images, k) for k in CACHED}}, cache)


def _class_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class) for a path .../<split>/<class>/<file>, else None."""
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        if parts[-1].lower().endswith(IMAGE_SUFFIXES):
            return parts[-3], parts[-2]
    return None


# An image found in a source: (class, file name, where it came from, its bytes).
Found = tuple[str, str, str, bytes]


def _decode_dir(root: Path) -> ImageSet:
    files: dict[str, list[Found]] = {"train": [], "test": []}
    for path in root.rglob("*"):
        where = _class_of(path.relative_to(root).parts)
        if where and path.is_file():
            files[where[0]].append((where[1], path.name, str(path), path.read_bytes()))
    return _assemble(files, str(root))


def _decode_tar(root: Path) -> ImageSet:
    files: dict[str, list[Found]] = {"train": [], "test": []}
    try:
        with tarfile.open(root) as tar:
            for member in tar:
                parts = Path(member.name).parts
                where = _class_of(parts) if member.isfile() else None
                if where:
                    blob = tar.extractfile(member).read()
                    files[where[0]].append((where[1], parts[-1], f"{root}:{member.name}", blob))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"data.root={str(root)!r} is not a readable tar archive: {err}") from err
    return _assemble(files, str(root))


def _assemble(files: dict[str, list[Found]], where: str) -> ImageSet:
    classes = sorted({item[0] for item in files["train"]})
    if not classes or not files["test"]:
        raise DataError(
            f"data.root={where!r} holds no images under train/<class>/ and test/<class>/ "
            f"(png or jpg)"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({item[0] for item in files["test"]} - set(index))
    if unknown:
        raise DataError(f"data.root={where!r}: test classes {unknown} are not among train's")
    out = []
    for split in ("train", "test"):
        # (class, file name): the same order whether the source is a folder or a tarball of it
        items = sorted(files[split], key=lambda item: item[:2])
        x = torch.stack([_decode(blob, name) for _, _, name, blob in items])
        y = torch.tensor([index[item[0]] for item in items], dtype=torch.int64)
        out += [x, y]
    images = ImageSet(*out, classes=classes)
    _check(images, where)
    return images


def _decode(blob: bytes, name: str) -> torch.Tensor:
    """One image file's pixels; errors name the file (a path, or archive:member)."""
    try:
        with warnings.catch_warnings():
            # a wrong size is refused from the header alone, so no large image is ever decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise DataError(f"{name}: images must be {IMAGE_SIZE}x{IMAGE_SIZE}, "
                                    f"found {img.size[0]}x{img.size[1]}")
                return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        reason = "not an image" if isinstance(err, UnidentifiedImageError) else str(err)
        raise DataError(f"{name} cannot be decoded: {reason}") from None


def _check(images: ImageSet, where: str) -> None:
    for x, y in ((images.x_train, images.y_train), (images.x_test, images.y_test)):
        if x.dtype != torch.uint8 or x.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"data.root={where!r}: images must be {IMAGE_SIZE}x{IMAGE_SIZE} RGB, "
                f"found shape {tuple(x.shape[1:])}"
            )
        if len(x) != len(y):
            raise DataError(f"data.root={where!r}: {len(x)} images but {len(y)} labels")


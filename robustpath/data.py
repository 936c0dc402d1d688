"""Dataset registry: fashion-mnist (embedded default), mnist, cifar10, cifar100.

Every loader returns float32 images in [0, 1] with shape ``[N, C, H, W]`` and int64
labels ``[N]``, held in memory (these datasets are small). Normalisation is *not*
applied here: it is a buffer inside each model (docs/architecture.md: pixels in [0, 1]).

Sources, in order:

* fashion-mnist: Debian's ``dataset-fashion-mnist`` IDX files in
  ``/usr/share/datasets/fashion-mnist/``; else IDX files under the data root
  (``<root>/FashionMNIST/raw/`` as torchvision writes them, or ``<root>/fashion-mnist/``);
  else torchvision's download into the data root when ``download`` is true.
* mnist: ``<root>/MNIST/raw/`` IDX files, else torchvision's download.
* cifar10 / cifar100: torchvision's on-disk format (``<root>/cifar-10-batches-py``,
  ``<root>/cifar-100-python``), else torchvision's download.

Missing data with no way to get it raises :class:`~robustpath.errors.UserError`
naming what to install or where to put the files. Setting the environment variable
``ROBUSTPATH_OFFLINE=1`` turns every download off (as ``download=False`` does), for
machines without a network and for tests.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustpath.errors import UserError
from robustpath.registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_ROOT = Path(os.environ.get("ROBUSTPATH_DATA", "data"))
OFFLINE_ENV = "ROBUSTPATH_OFFLINE"


def offline() -> bool:
    """True when ``ROBUSTPATH_OFFLINE`` is set to anything but "", "0", "false", "no"."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _offline_note(download: bool) -> str:
    return f" (downloads are off: {OFFLINE_ENV} is set)" if download and offline() else ""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shapes, classes and the per-channel statistics
    that models use for their internal normalisation."""

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[Path, bool, bool], tuple[torch.Tensor, torch.Tensor]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (raises UserError for unknown names)."""
    return DATASETS.get(name)


# ---------------------------------------------------------------- IDX (MNIST-style) files
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped) into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream (BadGzipFile is OSError)
        raise UserError(f"{path} is unreadable or corrupt ({type(e).__name__}); "
                        "delete it and fetch it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(data) < offset:
        raise UserError(f"{path} is truncated or corrupt (incomplete header)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise UserError(f"{path} is truncated or corrupt ({len(data) - offset} of {expected} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for suffix in ("", ".gz"):
            p = d / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _idx_split(dirs: list[Path], train: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    prefix = "train" if train else "t10k"
    ip, lp = _find_idx(dirs, f"{prefix}-images-idx3-ubyte"), _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if ip is None or lp is None:
        return None
    x = torch.from_numpy(_read_idx(ip).copy()).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(_read_idx(lp).astype(np.int64))
    if len(x) != len(y):
        raise UserError(f"{ip} and {lp} disagree on the number of examples")
    return x, y


def _mnist_like(name: str, tv_name: str, dirs: list[Path], root: Path, train: bool,
                download: bool, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    found = _idx_split(dirs, train)
    if found is not None:
        return found
    if download and not offline():
        import torchvision

        try:
            getattr(torchvision.datasets, tv_name)(str(root), train=train, download=True)
        except Exception as e:  # noqa: BLE001  (network errors come in many types)
            raise UserError(f"{name} not found and download failed ({type(e).__name__}); {hint}") from None
        found = _idx_split(dirs, train)
        if found is not None:
            return found
    raise UserError(f"{name} not found; {hint}{_offline_note(download)}")


def _load_fashion_mnist(root: Path, train: bool, download: bool):
    dirs = [DEBIAN_FASHION_MNIST, root / "FashionMNIST" / "raw", root / "fashion-mnist", root]
    hint = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            f"or put the IDX files in {root / 'FashionMNIST' / 'raw'}")
    return _mnist_like("fashion-mnist", "FashionMNIST", dirs, root, train, download, hint)


def _load_mnist(root: Path, train: bool, download: bool):
    dirs = [root / "MNIST" / "raw", root / "mnist", root]
    hint = f"put the MNIST IDX files in {root / 'MNIST' / 'raw'}"
    return _mnist_like("mnist", "MNIST", dirs, root, train, download, hint)


_CIFAR_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": (["train"], ["test"], "fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR's python batches that only rebuilds numpy arrays, lists,
    dicts and bytes: a file in the data root cannot run code when it is read."""

    _ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not a CIFAR python batch or is corrupt "
                        f"({type(e).__name__})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise UserError(f"{path} has unexpected shape {data.shape} (expected [N, 3072] and N labels)")
    return data, labels


def _cifar(tv_name: str, folder: str, name: str):
    """Loader for torchvision's on-disk CIFAR format (``<root>/<folder>/`` with the python
    pickle batches). The batches are read directly, not through torchvision's dataset
    class, whose md5 check would reject any folder but the official one (e.g. a small
    test folder); torchvision only downloads (and verifies) a missing folder."""
    train_files, test_files, label_key = _CIFAR_FILES[name]

    def load(root: Path, train: bool, download: bool):
        files = [root / folder / f for f in (train_files if train else test_files)]
        missing = [f for f in files if not f.is_file()]
        if missing and download and not offline():
            import torchvision

            try:
                getattr(torchvision.datasets, tv_name)(str(root), train=train, download=True)
            except Exception as e:  # noqa: BLE001  (network errors come in many types)
                raise UserError(f"{name} not found in {root / folder} and download failed "
                                f"({type(e).__name__}); put torchvision's CIFAR files there") from None
            missing = [f for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{name} not found: expected torchvision's format in {root / folder} "
                            f"(missing {missing[0].name}){_offline_note(download)}")
        parts = [_read_cifar_batch(f, label_key) for f in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        x = torch.from_numpy(data).float().div_(255.0).contiguous()
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        return x, y

    return load


DATASETS.register("fashion-mnist")(DatasetInfo(
    "fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), _load_fashion_mnist))
DATASETS.register("mnist")(DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), _load_mnist))
DATASETS.register("cifar10")(DatasetInfo(
    "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
    _cifar("CIFAR10", "cifar-10-batches-py", "cifar10")))
DATASETS.register("cifar100")(DatasetInfo(
    "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    _cifar("CIFAR100", "cifar-100-python", "cifar100")))


# ---------------------------------------------------------------- public API
#: seeds of the training / test subsets every stage reads (one place: the endpoints,
#: the stages and the zoo see the same examples, so their results are paired)
TRAIN_SUBSET_SEED, TEST_SUBSET_SEED = 1234, 4321


def load_subsets(name: str, root: str | Path | None, train_subset: int | None,
                 test_subset: int | None) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: the seeded training and test subsets that
    endpoint training and every stage read (:data:`TRAIN_SUBSET_SEED`,
    :data:`TEST_SUBSET_SEED`), so their results are paired."""
    x_tr, y_tr = load(name, train=True, root=root, subset=train_subset, seed=TRAIN_SUBSET_SEED)
    x_te, y_te = load(name, train=False, root=root, subset=test_subset, seed=TEST_SUBSET_SEED)
    return x_tr, y_tr, x_te, y_te


def load(name: str, *, train: bool, root: str | Path | None = None, subset: int | None = None,
         seed: int = 0, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of dataset ``name`` as ``(x [N,C,H,W] float32 in [0,1], y [N] int64)``.

    ``subset`` picks a deterministic, seeded random subset of that many examples
    (the same ``seed`` always gives the same examples); ``None`` or 0 keeps all.
    """
    ds = info(name)
    root = Path(root) if root is not None else DEFAULT_DATA_ROOT
    if root.exists() and not root.is_dir():
        raise UserError(f"data root {root} is not a directory")
    x, y = ds.loader(root, train, download)
    if subset:
        if subset < 0:
            raise UserError(f"subset size must be positive, got {subset}")
        if subset < len(x):
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(x), generator=g)[:subset].sort().values
            x, y = x[idx].contiguous(), y[idx].contiguous()
    return x, y


class Batches:
    """Re-iterable batches over in-memory tensors: ``for x, y in Batches(x, y, 128)``.

    ``shuffle`` reshuffles each epoch from a seeded generator (epoch ``e`` uses
    ``seed + e``), so runs are repeatable. ``augment`` applies the standard CIFAR
    augmentation (random crop with 4-pixel padding, horizontal flip) on the fly.
    Much faster than a DataLoader for data that already sits in memory.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, *,
                 shuffle: bool = False, seed: int = 0, augment: bool = False,
                 drop_last: bool = False, device: str | torch.device = "cpu"):
        if len(x) != len(y):
            raise ValueError("x and y lengths differ")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.augment, self.drop_last = shuffle, seed, augment, drop_last
        self.device = torch.device(device)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = _augment(xb, g)
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out

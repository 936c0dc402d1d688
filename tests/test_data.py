"""Dataset registry and in-memory batching. Real Fashion-MNIST from Debian's package;
everything else from files the tests write under a temporary data root. Nothing
downloads: ``download=False`` or ``ROBUSTPATH_OFFLINE=1``."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from robustpath import data
from robustpath.data import Batches
from robustpath.errors import UserError


# ---------------------------------------------------------------- real Fashion-MNIST
@pytest.fixture(scope="module")
def fmnist_test():
    return data.load("fashion-mnist", train=False, download=False)


def test_fashion_mnist_test_split(fmnist_test):
    x, y = fmnist_test
    assert x.shape == (10000, 1, 28, 28)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10  # the official test split is balanced


def test_fashion_mnist_train_split_shapes():
    x, y = data.load("fashion-mnist", train=True, download=False)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert x.is_contiguous()


def test_info_matches_loaded_shapes(fmnist_test):
    ds = data.info("fashion-mnist")
    assert tuple(fmnist_test[0].shape[1:]) == ds.shape
    assert ds.num_classes == 10
    # the registered statistics are the real ones (models normalise with them)
    x = fmnist_test[0]
    assert abs(float(x.mean()) - ds.mean[0]) < 0.01
    assert abs(float(x.std()) - ds.std[0]) < 0.01


def test_seeded_subsets_are_deterministic_and_differ_across_seeds(fmnist_test):
    a1 = data.load("fashion-mnist", train=False, subset=300, seed=1, download=False)
    a2 = data.load("fashion-mnist", train=False, subset=300, seed=1, download=False)
    b = data.load("fashion-mnist", train=False, subset=300, seed=2, download=False)
    assert a1[0].shape == (300, 1, 28, 28) and a1[1].shape == (300,)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    assert not torch.equal(a1[0], b[0])
    # a subset is made of real examples with their own labels
    x_all, y_all = fmnist_test
    flat = x_all.flatten(1)
    for i in (0, 150, 299):
        j = int((flat == a1[0][i].flatten()).all(1).nonzero()[0])
        assert y_all[j] == a1[1][i]


def test_subset_zero_or_larger_keeps_everything(fmnist_test):
    x, _ = data.load("fashion-mnist", train=False, subset=0, download=False)
    assert len(x) == 10000
    x, _ = data.load("fashion-mnist", train=False, subset=20000, download=False)
    assert len(x) == 10000


def test_negative_subset_is_a_user_error():
    with pytest.raises(UserError, match="subset"):
        data.load("fashion-mnist", train=False, subset=-5, download=False)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        data.load("svhn", train=True, download=False)


def test_data_root_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        data.load("mnist", train=True, root=f, download=False)


# ---------------------------------------------------------------- IDX files under a tmp root
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist(root, images: bytes, labels: bytes, gz: bool = False):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    with opener(raw / f"train-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(images)
    with opener(raw / f"train-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(labels)
    return raw


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_on_written_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    _write_mnist(tmp_path, _idx_bytes(imgs), _idx_bytes(labels), gz=gz)
    x, y = data.load("mnist", train=True, root=tmp_path, download=False)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert y.tolist() == labels.tolist() and y.dtype == torch.int64


def _good_labels(n=7):
    return _idx_bytes(np.zeros(n, dtype=np.uint8))


@pytest.mark.parametrize("images", [
    pytest.param(lambda good: good[:-100], id="truncated-data"),
    pytest.param(lambda good: good[:10], id="truncated-header"),
    pytest.param(lambda good: b"PK\x03\x04" + good[4:], id="bad-magic"),
    pytest.param(lambda good: b"", id="empty"),
    pytest.param(lambda good: good + b"\x00" * 5, id="trailing-bytes"),
])
def test_corrupt_idx_is_a_user_error(tmp_path, images):
    good = _idx_bytes(np.zeros((7, 28, 28), dtype=np.uint8))
    raw = _write_mnist(tmp_path, images(good), _good_labels())
    with pytest.raises(UserError) as e:
        data.load("mnist", train=True, root=tmp_path, download=False)
    assert str(raw / "train-images-idx3-ubyte") in str(e.value)


def test_corrupt_gzip_is_a_user_error(tmp_path):
    good = gzip.compress(_idx_bytes(np.zeros((7, 28, 28), dtype=np.uint8)))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_good_labels()))
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist", train=True, root=tmp_path, download=False)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="corrupt"):
        data.load("mnist", train=True, root=tmp_path, download=False)


def test_images_and_labels_must_agree(tmp_path):
    _write_mnist(tmp_path, _idx_bytes(np.zeros((7, 28, 28), dtype=np.uint8)), _good_labels(6))
    with pytest.raises(UserError, match="disagree"):
        data.load("mnist", train=True, root=tmp_path, download=False)


# ---------------------------------------------------------------- missing data, offline
def test_missing_cifar10_names_the_path(tmp_path):
    with pytest.raises(UserError) as e:
        data.load("cifar10", train=True, root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


def test_missing_mnist_names_the_path(tmp_path):
    with pytest.raises(UserError) as e:
        data.load("mnist", train=False, root=tmp_path, download=False)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_offline_env_prevents_download(tmp_path, monkeypatch, name):
    monkeypatch.setenv("ROBUSTPATH_OFFLINE", "1")
    # torchvision must not even be asked: make any download attempt explode loudly
    import torchvision

    def boom(*a, **k):
        raise AssertionError("a download was attempted although ROBUSTPATH_OFFLINE=1")

    for cls in ("MNIST", "CIFAR10", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, cls, boom)
    with pytest.raises(UserError, match="ROBUSTPATH_OFFLINE"):
        data.load(name, train=True, root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("no", False),
                                            ("1", True), ("yes", True), ("true", True)])
def test_offline_flag_values(monkeypatch, value, expected):
    monkeypatch.setenv("ROBUSTPATH_OFFLINE", value)
    assert data.offline() is expected


# ---------------------------------------------------------------- CIFAR's on-disk format
def _write_cifar10(root, n_per_file=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"data": rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, size=n_per_file).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def test_cifar10_from_torchvision_format(tmp_path):
    _write_cifar10(tmp_path)
    x, y = data.load("cifar10", train=True, root=tmp_path, download=False)
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and y.shape == (15,)
    x, _ = data.load("cifar10", train=False, root=tmp_path, download=False)
    assert x.shape == (3, 3, 32, 32)


def test_corrupt_cifar_batch_is_a_user_error(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="test_batch"):
        data.load("cifar10", train=False, root=tmp_path, download=False)


# ---------------------------------------------------------------- Batches
def _ids(n):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_example_once_per_epoch(shuffle):
    x, y = _ids(103)
    loader = Batches(x, y, 10, shuffle=shuffle, seed=3)
    assert len(loader) == 11
    for _ in range(2):
        seen_x, seen_y, sizes = [], [], []
        for xb, yb in loader:
            seen_x += xb.flatten().long().tolist()
            seen_y += yb.tolist()
            sizes.append(len(yb))
        assert sorted(seen_x) == list(range(103))
        assert seen_x == seen_y  # images stay with their labels
        assert sizes == [10] * 10 + [3]
    if not shuffle:
        assert seen_x == list(range(103))


def test_batches_drop_last():
    x, y = _ids(103)
    loader = Batches(x, y, 10, shuffle=True, drop_last=True)
    assert len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10 and all(len(b[1]) == 10 for b in batches)
    assert len({int(i) for _, yb in batches for i in yb}) == 100


def _order(loader):
    return [i for _, yb in loader for i in yb.tolist()]


def test_batches_shuffle_deterministically():
    x, y = _ids(50)
    a, b = Batches(x, y, 8, shuffle=True, seed=7), Batches(x, y, 8, shuffle=True, seed=7)
    a1, a2 = _order(a), _order(a)
    assert a1 == _order(b) and a2 == _order(b)  # same seed, same epochs: same orders
    assert a1 != a2  # each epoch reshuffles
    assert a1 != list(range(50))
    assert _order(Batches(x, y, 8, shuffle=True, seed=8)) != a1
    a.set_epoch(0)
    assert _order(a) == a1  # set_epoch replays an epoch (resume)


def test_batches_augment_keeps_shape_range_and_is_seeded():
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16)
    a = list(Batches(x, y, 8, shuffle=True, seed=1, augment=True))
    b = list(Batches(x, y, 8, shuffle=True, seed=1, augment=True))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (8, 3, 32, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert 0.0 <= float(xa.min()) and float(xa.max()) <= 1.0
    plain = torch.cat([xb for xb, _ in Batches(x, y, 8, shuffle=True, seed=1)])
    assert not torch.equal(torch.cat([xa for xa, _ in a]), plain)


def test_batches_reject_mismatched_lengths():
    with pytest.raises(ValueError):
        Batches(torch.zeros(3, 1, 2, 2), torch.zeros(4), 2)

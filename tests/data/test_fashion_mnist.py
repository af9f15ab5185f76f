"""Fashion-MNIST reader: IDX files written here (offline), size checks and clear errors."""

import gzip
import struct

import numpy as np
import pytest

from nestlearn.data import fashion_mnist as fm
from nestlearn.data.fetch import DataError


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, array, **kw):
    path.write_bytes(gzip.compress(_idx_bytes(array, **kw)))
    return path


def _fake_package(cache, counts):
    """A cache holding an already unpacked `dataset-fashion-mnist` with tiny splits."""
    root = cache / f"deb-{fm.PACKAGE}" / fm.SUBDIR
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, (images, labels, _) in fm.FILES.items():
        x = rng.integers(0, 256, (counts[split], 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, counts[split], dtype=np.uint8)
        _write(root / images, x)
        _write(root / labels, y)
        out[split] = (x, y)
    return root, out


def test_read_idx_round_trips_gzipped_and_plain(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(fm.read_idx(_write(tmp_path / "a.gz", x)), x)
    (tmp_path / "b").write_bytes(_idx_bytes(x[0, 0]))
    got = fm.read_idx(tmp_path / "b")
    assert got.dtype == np.uint8 and got.shape == (4,)
    np.testing.assert_array_equal(got, x[0, 0])


def test_read_idx_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        fm.read_idx(tmp_path / "nope.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt"):
        fm.read_idx(tmp_path / "junk.gz")
    good = gzip.compress(_idx_bytes(np.zeros((3, 5))))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt"):
        fm.read_idx(tmp_path / "cut.gz")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 5)))[:-1])
    with pytest.raises(DataError, match=r"shape \(3, 5\).*holds 14"):
        fm.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        fm.read_idx(tmp_path / "magic")
    with pytest.raises(DataError, match="type code 0x0d"):
        fm.read_idx(_write(tmp_path / "float.gz", np.zeros(2), type_code=0x0D))


def test_load_checks_the_split_sizes(tmp_path):
    _fake_package(tmp_path, {"train": 12, "test": 5})
    with pytest.raises(DataError, match=r"shape \(60000, 28, 28\), got \(12, 28, 28\)"):
        fm.load_fashion_mnist(cache=tmp_path)


def test_load_returns_the_arrays(tmp_path, monkeypatch):
    _, written = _fake_package(tmp_path, {"train": 12, "test": 5})
    monkeypatch.setitem(fm.FILES, "train", (*fm.FILES["train"][:2], 12))
    monkeypatch.setitem(fm.FILES, "test", (*fm.FILES["test"][:2], 5))
    ds = fm.load_fashion_mnist(cache=tmp_path)
    np.testing.assert_array_equal(ds.train_images, written["train"][0])
    np.testing.assert_array_equal(ds.test_labels, written["test"][1])
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32


def test_load_rejects_labels_out_of_range(tmp_path, monkeypatch):
    root, _ = _fake_package(tmp_path, {"train": 12, "test": 5})
    _write(root / fm.FILES["test"][1], np.array([0, 1, 2, 3, 10]))
    monkeypatch.setitem(fm.FILES, "train", (*fm.FILES["train"][:2], 12))
    monkeypatch.setitem(fm.FILES, "test", (*fm.FILES["test"][:2], 5))
    with pytest.raises(DataError, match="label 10"):
        fm.load_fashion_mnist(cache=tmp_path)


@pytest.mark.slow
def test_real_package_has_the_published_sizes_and_balanced_classes():
    ds = fm.load_fashion_mnist()
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10


def test_standardized_splits_hold_out_validation_and_use_training_statistics():
    rng = np.random.default_rng(0)
    data = fm.FashionMNIST(
        rng.integers(0, 256, (24, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 24).astype(np.int32),
        rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 6).astype(np.int32),
    )
    s = fm.standardized_splits(data, val_examples=4, train_limit=20, test_limit=5)
    assert s.x_train.shape == (16, 784) and s.x_val.shape == (4, 784) and s.x_test.shape == (5, 784)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    np.testing.assert_allclose([s.x_train.mean(), s.x_train.std()], [0.0, 1.0], atol=1e-5)
    # The kept training examples are split between train and validation, each once.
    kept = data.train_labels[:20].tolist()
    assert sorted(np.concatenate([s.y_train, s.y_val]).tolist()) == sorted(kept)
    none = fm.standardized_splits(data)
    assert none.x_val.shape == (0, 784) and none.x_train.shape == (24, 784)
    with pytest.raises(ValueError, match="val_examples=24"):
        fm.standardized_splits(data, val_examples=24)

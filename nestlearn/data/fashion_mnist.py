"""Fashion-MNIST (60,000 training / 10,000 test images of 28×28 grey clothes, 10 classes).

The data installs from the Debian package `dataset-fashion-mnist` (MIT), fetched
into the nestlearn cache with `fetch_deb` on first use; the four gzipped IDX files are read from
`usr/share/datasets/fashion-mnist/` inside the unpacked package. IDX (LeCun's format) is a
big-endian header — two zero bytes, a type code (0x08 = uint8), the number of dimensions n —
followed by n big-endian uint32 sizes and the row-major data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nestlearn.data import fetch
from nestlearn.data.fetch import DataError

__all__ = [
    "CLASS_NAMES",
    "FashionMNIST",
    "FlatSplits",
    "load_fashion_mnist",
    "read_idx",
    "standardized_splits",
]

PACKAGE = "dataset-fashion-mnist"
SUBDIR = Path("usr/share/datasets/fashion-mnist")

#: Label i is CLASS_NAMES[i] (the dataset's README).
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: split -> (images file, labels file, number of examples)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IMAGE_SHAPE = (28, 28)


class FashionMNIST(NamedTuple):
    """The two splits as numpy arrays."""

    train_images: np.ndarray  # [60000, 28, 28] uint8, 0 = background
    train_labels: np.ndarray  # [60000] int32 in [0, 10)
    test_images: np.ndarray  # [10000, 28, 28] uint8
    test_labels: np.ndarray  # [10000] int32 in [0, 10)


def read_idx(path: str | Path) -> np.ndarray:
    """Reads a gzipped (`*.gz`) or plain IDX file of unsigned bytes into a uint8 array.

    Raises:
      DataError: the file is missing, not gzip when named `.gz`, has a bad magic number or a
        type other than uint8, or holds more or fewer bytes than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} is missing")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path} is corrupt ({e}); delete it to fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"IDX file {path} does not start with the IDX magic 0x0000; corrupt")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"IDX file {path} has type code {dtype_code:#04x}; only uint8 (0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {path} declares shape {shape} ({expected} bytes of data) but holds "
            f"{len(raw) - header}; corrupt or truncated"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file, count = FILES[split]
    images, labels = read_idx(root / images_file), read_idx(root / labels_file)
    if images.shape != (count, *IMAGE_SHAPE):
        raise DataError(
            f"{root / images_file}: expected images of shape {(count, *IMAGE_SHAPE)}, got "
            f"{images.shape}"
        )
    if labels.shape != (count,):
        raise DataError(
            f"{root / labels_file}: expected labels of shape {(count,)}, got {labels.shape}"
        )
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(
            f"{root / labels_file}: label {labels.max()} is not a class index in [0, 10)"
        )
    return images, labels.astype(np.int32)


def load_fashion_mnist(*, cache: str | Path | None = None) -> FashionMNIST:
    """Returns Fashion-MNIST, fetching the Debian package into the cache on first use.

    Args:
      cache: the cache directory (default `nestlearn.data.cache_dir()`).

    Raises:
      DataError: the package could not be fetched, or a file is missing, corrupt or of the wrong
        size (60,000 training and 10,000 test examples); the message names the file.
    """
    cache_path = fetch.cache_dir(cache)
    root = fetch.fetch_deb(PACKAGE, cache=cache_path) / SUBDIR
    train_images, train_labels = _split(root, "train")
    test_images, test_labels = _split(root, "test")
    return FashionMNIST(train_images, train_labels, test_images, test_labels)


class FlatSplits(NamedTuple):
    """Flattened, standardised splits of `standardized_splits` (x float32 [n, 784], y int32 [n])."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # [0, 784] when no validation examples were held out
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def standardized_splits(
    data: FashionMNIST,
    *,
    val_examples: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 1,
) -> FlatSplits:
    """Images flattened to 784 pixels and standardised by the training pixels' mean and std.

    Args:
      data: the dataset (`load_fashion_mnist`, or arrays of the same layout).
      val_examples: training examples held out for validation, drawn by a permutation of
        `seed` (taken after `train_limit`); the rest train, in that permutation's order.
      train_limit, test_limit: keep only the first examples of a split (quick runs).
      seed: the validation draw's seed.

    Raises:
      ValueError: `val_examples` outside [0, the training examples).
    """
    x = data.train_images.reshape(len(data.train_images), -1)[:train_limit]
    y = data.train_labels[:train_limit]
    x_te = data.test_images.reshape(len(data.test_images), -1)[:test_limit]
    y_te = data.test_labels[:test_limit]
    if not 0 <= val_examples < len(y):
        raise ValueError(f"val_examples={val_examples} must be in [0, {len(y)})")
    x, x_te = x.astype(np.float32), x_te.astype(np.float32)
    val, train = np.arange(0), np.arange(len(y))
    if val_examples:
        perm = np.random.default_rng(seed).permutation(len(y))
        val, train = perm[:val_examples], perm[val_examples:]
    mean, std = x[train].mean(), x[train].std()
    norm = lambda a: (a - mean) / std
    y, y_te = y.astype(np.int32), y_te.astype(np.int32)
    return FlatSplits(norm(x[train]), y[train], norm(x[val]), y[val], norm(x_te), y_te)

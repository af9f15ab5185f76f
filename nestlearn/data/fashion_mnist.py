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

__all__ = ["CLASS_NAMES", "FashionMNIST", "load_fashion_mnist", "read_idx"]

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

"""nestlearn.data: corpora, Fashion-MNIST, tokenizers, synthetic text and batch iterators."""

from nestlearn.data.corpora import CORPORA, Split, load_corpus, split_documents
from nestlearn.data.dataset import Dataset, load_dataset
from nestlearn.data.fashion_mnist import FashionMNIST, load_fashion_mnist, read_idx
from nestlearn.data.fetch import DataError, cache_dir
from nestlearn.data.iterator import Batch, BatchIterator, IteratorState, eval_batches
from nestlearn.data.synthetic import synthetic_corpus
from nestlearn.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    from_spec,
    gpt2_vocab_files,
    make_tokenizer,
)

__all__ = [
    "CORPORA",
    "BPETokenizer",
    "Batch",
    "BatchIterator",
    "ByteTokenizer",
    "CharTokenizer",
    "DataError",
    "Dataset",
    "FashionMNIST",
    "IteratorState",
    "Split",
    "Tokenizer",
    "cache_dir",
    "eval_batches",
    "from_spec",
    "gpt2_vocab_files",
    "load_corpus",
    "load_dataset",
    "load_fashion_mnist",
    "make_tokenizer",
    "read_idx",
    "split_documents",
    "synthetic_corpus",
]

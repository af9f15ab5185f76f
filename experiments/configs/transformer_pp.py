"""Transformer++ baseline on Shakespeare (byte tokenizer): the reference point for Hope.

Purpose: the data and optimizer of `default.py` with a plain pre-norm Transformer (RoPE
attention + SwiGLU, no CMS, one level) and a 10-minute budget, for comparison with Hope.

Expected result (measured on the shared 2-core CPU, load average 7-10, 558k parameters, 600
steps of 16×128 bytes): 342 s wall (≈4,000 tokens/s); validation loss 1.76 nats/byte (2.54 bits
per char), test 1.86 (2.68 bpc).

Command:
  python experiments/main.py --config=experiments/configs/transformer_pp.py \
      --workdir=runs/transformer_pp
  python experiments/main.py --config=experiments/configs/transformer_pp.py:smoke \
      --workdir=/tmp/smoke_tpp                   # tiny synthetic run, seconds
"""

from nestlearn.train.config import base_config


def get_config(arg=None):
    """`arg`: None for the full run, "smoke" for a tiny synthetic run."""
    c = base_config("transformer_pp")
    c.model.vocab_size = 256
    c.model.d_model = 128
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.max_len = 256
    c.data.corpus = "shakespeare"
    c.data.tokenizer = "byte"
    c.data.seq_len = 128
    c.data.batch_size = 16
    c.train.num_steps = 600
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    if arg == "smoke":
        _smoke(c)
    elif arg:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: smoke")
    return c


def _smoke(c):
    c.model.d_model = 32
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.max_len = 64
    c.data.corpus = "synthetic"
    c.data.seq_len = 32
    c.data.batch_size = 4
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.sample.num_samples = 1
    c.sample.prompt = "a"
    c.sample.max_new_tokens = 20

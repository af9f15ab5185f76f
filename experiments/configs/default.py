"""Hope on Shakespeare (byte tokenizer): the default experiment, run by `make run`.

Purpose: train the default Hope model (self-modifying Titans memory followed by a three-level
Continuum Memory System, arXiv 2512.24695 §8.3, Eqs. 94–97) on the Shakespeare plays, split by
play, in under ten minutes on a 2-core CPU. The CMS levels are trained in scheduled mode: level ℓ
is its own training-step level, updated every `periods[ℓ]` steps with its summed gradients
(Eq. 71), beside an AdamW backbone.

Expected result (measured on the 2-core CPU, idle, venv built; 1.43M parameters, 300 steps of
16×128 bytes, ≈3,500 tokens/s after the compile): 3 min 48 s wall for the whole run (training,
evaluation, samples, probe, report), peak RSS 1.8 GB; validation loss 1.778 nats/byte (2.56 bits
per char), test 1.837 (2.65 bpc); no skipped steps; probe late gap (writes off − on, positions
64-127) +0.0020 ± 0.0013 nats/byte: 128-byte windows are too short for the memory to show much
(the memory study's 1,024-byte windows do, docs/results/memory/README.md). Samples are
Shakespeare-shaped, mostly misspelt words.

Command:
  python experiments/main.py --config=experiments/configs/default.py --workdir=runs/default
  python experiments/main.py --config=experiments/configs/default.py:smoke \
      --workdir=/tmp/smoke                       # tiny synthetic run, under a minute
  python experiments/main.py --mode=eval --workdir=runs/default   # evaluate + sample again
  python experiments/main.py --mode=probe --workdir=runs/default  # memory writes on vs off
"""

from nestlearn.train.config import base_config


def get_config(arg=None):
    """`arg`: None for the full run, "smoke" for a tiny synthetic run."""
    c = base_config("hope")
    c.seed = 0
    # Model: Hope blocks (self-modifying memory + CMS with levels every 1, 4 and 16 steps).
    c.model.vocab_size = 256
    c.model.d_model = 128
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.max_len = 512
    c.model.cms.periods = (1, 4, 16)
    c.model.cms.mode = "scheduled"
    # Data: 42 Shakespeare works, 2 held out for validation and 2 for test; byte tokens.
    c.data.corpus = "shakespeare"
    c.data.tokenizer = "byte"
    c.data.seq_len = 128
    c.data.batch_size = 16
    # Levels: AdamW on the backbone and on each CMS level at its own period (config.levels).
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    # Schedule of the run.
    c.train.num_steps = 300
    c.train.log_every = 10
    c.train.eval_every = 150
    c.train.eval_batches = 4
    c.train.checkpoint_every = 100
    c.sample.prompt = "ROMEO.\n"
    c.sample.max_new_tokens = 200
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
    c.model.chunk_size = 16
    c.model.cms.periods = (1, 4)
    c.model.cms.chunk_sizes = (16, 64)
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

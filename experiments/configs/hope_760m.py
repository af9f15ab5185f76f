"""Hope at the paper's 760M scale on a TPU pod slice or multi-GPU hosts (docs/scaling.md).

Purpose: the sharded training recipe for the 760M Hope language model of arXiv 2512.24695 §9
(760M parameters, 30B tokens). The paper does not state layers, width or heads; this config
takes the Miras table's 760M shape (24 layers x 1536, 16 heads; PAPER.md §8, unverified) and
sets the CMS feed-forward ratio to 1.0 so that the count lands near the target: 821M parameters
with a 32K vocabulary, of which 510M in the three CMS levels (periods 1, 4, 16 steps). Optimizer:
AdamW as in Titans (lr 1.25e-3 from the Miras table, cosine, weight decay 0.1), 0.5M tokens per
step (128 x 4096), bfloat16 compute with float32 params, each block rematerialised.

Mesh: `mesh.fsdp = -1` (FSDP over every device, batch split the same way) and `mesh.data = 1`;
for several slices or many hosts use `arg = "dp<N>"` to put N-way pure data parallelism outside
(e.g. `dp2` on two 64-chip slices). Per-device memory on 64 devices: see docs/scaling.md.

Expected result: not measured (no accelerator pod in this project); the configuration itself is
checked by `tests/parallel` at a tiny size and by `validate_config`.

Command (every host of a TPU v5p-128 slice, or every node of a GPU cluster):
  python experiments/main.py --config=experiments/configs/hope_760m.py --workdir=gs://b/hope760m
  python experiments/main.py --config=experiments/configs/hope_760m.py:dp2 --workdir=...
"""

from nestlearn.train.config import base_config


def get_config(arg=None):
    """`arg`: None (FSDP over all devices) or "dp<N>" (N-way data parallelism x FSDP)."""
    c = base_config("hope")
    c.model.vocab_size = 32_000
    c.model.d_model = 1536
    c.model.num_layers = 24
    c.model.num_heads = 16
    c.model.mlp_ratio = 1.0
    c.model.max_len = 4096
    c.model.chunk_size = 64
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.cms.periods = (1, 4, 16)
    c.model.cms.mode = "scheduled"
    c.model.self_modifying.eta_max = 0.02
    c.data.corpus = "text_dir"
    c.data.path = "data/fineweb_edu"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 4096
    c.data.batch_size = 128
    c.optim.lr = 1.25e-3
    c.optim.warmup_steps = 2000
    c.optim.weight_decay = 0.1
    c.train.num_steps = 57_000  # 30B tokens / (128 x 4096)
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.progress_bar = False
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.mesh.distributed.enabled = True  # auto-detects TPU pods, SLURM, Open MPI
    if arg and arg.startswith("dp") and arg[2:].isdigit():
        c.mesh.data = int(arg[2:])
    elif arg:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: dp<N>")
    return c

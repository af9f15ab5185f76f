"""Hope at the paper's 1.3B scale on a TPU pod slice or multi-GPU hosts (docs/scaling.md).

Purpose: the sharded training recipe for the 1.3B Hope language model of arXiv 2512.24695 §9
(1.3B parameters, 100B tokens). Layers, width and heads are not in the paper; this config uses
24 layers x 2048, 16 heads and a CMS feed-forward ratio of 1.0: 1.44B parameters with a 32K
vocabulary, 906M of them in the three CMS levels (periods 1, 4, 16 steps). AdamW (lr 1e-3,
cosine, weight decay 0.1), 0.5M tokens per step (128 x 4096), bfloat16 compute, remat.

Mesh: FSDP over the devices of a host or slice, tensor parallelism 2 (heads, CMS hidden units
and vocabulary) to halve the per-device weights and activations, pure data parallelism across
slices or hosts with `arg = "dp<N>"`. Per-device memory: docs/scaling.md.

Expected result: not measured (no accelerator pod in this project).

Command (every host):
  python experiments/main.py --config=experiments/configs/hope_1p3b.py --workdir=gs://b/hope1p3b
  python experiments/main.py --config=experiments/configs/hope_1p3b.py:dp4 --workdir=...
"""

from nestlearn.train.config import base_config


def get_config(arg=None):
    """`arg`: None (FSDP x tensor 2 on all devices) or "dp<N>" (N-way data parallelism outside)."""
    c = base_config("hope")
    c.model.vocab_size = 32_000
    c.model.d_model = 2048
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
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2000
    c.optim.weight_decay = 0.1
    c.train.num_steps = 190_000  # 100B tokens / (128 x 4096)
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.progress_bar = False
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 2
    c.mesh.distributed.enabled = True
    if arg and arg.startswith("dp") and arg[2:].isdigit():
        c.mesh.data = int(arg[2:])
    elif arg:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: dp<N>")
    return c

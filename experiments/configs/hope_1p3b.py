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

from nestlearn.train.config import hope_pod_config


def get_config(arg=None):
    """`arg`: None (FSDP x tensor 2 on all devices) or "dp<N>" (N-way data parallelism outside)."""
    return hope_pod_config(d_model=2048, lr=1e-3, num_steps=190_000, tensor=2, arg=arg)

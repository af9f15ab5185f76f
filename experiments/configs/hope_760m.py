"""Hope at the paper's 760M scale on a TPU pod slice or multi-GPU hosts (docs/scaling.md).

Purpose: the sharded training recipe for the 760M Hope language model of arXiv 2512.24695 §9 (760M
parameters, 30B tokens). The paper does not state layers, width or heads; this config takes the 760M
shape of the Miras paper's table (arXiv 2504.13173: 24 layers x 1536, 16 heads; read from a
secondary summary, not checked against that paper) and sets the CMS feed-forward ratio to 1.0 so
that the count lands near the target: 821M parameters with a 32K vocabulary, of which 510M in the
three CMS levels (periods 1, 4, 16 steps). Optimizer: AdamW as in Titans (lr 1.25e-3 from the Miras
table, cosine, weight decay 0.1), 0.5M tokens per step (128 x 4096), bfloat16 compute with float32
params, each block rematerialised.

Mesh: `mesh.fsdp = -1` (FSDP over every device, batch split the same way) and `mesh.data = 1`;
for several slices or many hosts use `arg = "dp<N>"` to put N-way pure data parallelism outside
(e.g. `dp2` on two 64-chip slices). Per-device memory on 64 devices: see docs/scaling.md.

Expected result: not measured (no accelerator pod in this project); the configuration itself is
checked by `tests/parallel` at a tiny size and by `validate_config`.

Command (every host of a TPU v5p-128 slice, or every node of a GPU cluster):
  python experiments/main.py --config=experiments/configs/hope_760m.py --workdir=gs://b/hope760m
  python experiments/main.py --config=experiments/configs/hope_760m.py:dp2 --workdir=...
"""

from nestlearn.train.config import hope_pod_config


def get_config(arg=None):
    """`arg`: None (FSDP over all devices) or "dp<N>" (N-way data parallelism x FSDP)."""
    return hope_pod_config(d_model=1536, lr=1.25e-3, num_steps=57_000, tensor=1, arg=arg)

"""Adapter experiment (c) + (d): passkey retrieval beyond the attention window.

Purpose: can a memory pathway trained beside the frozen SmolLM2-135M-Instruct carry a passkey
past a sliding attention window? The frozen model runs with sliding-window attention of
`window` tokens, so at the answer no attention layer reads the needle directly (distance ≥
window; `nestlearn.pretrained.passkey`). Rows: the base model with full attention (upper
reference), the base with the window (expected ≈ chance: digit accuracy ≤ 0.1, exact 0), the
window + each trained memory pathway, and the same with the memory ablated at evaluation (d).

Training (only the pathway's parameters: memory projections, conv, gates, initial memory, output
gate and projection): `steps` AdamW steps (lr `lr`, global-norm clip 1) on batches of
`batch_size` examples of `train_length` tokens with distances drawn uniformly from
`train_distances` (short examples, all beyond the window); the loss is the cross-entropy of the
key's digits only, and the head runs on those positions only. The frozen blocks below the pathway
run outside the differentiated step (`adapters.hidden_states`), once per batch: a fresh batch
every step (`pool_batches = 0`) or a fixed pool reused for epochs (`pool_batches = k`).
Evaluation: `eval_examples` held-out examples per distance in `eval_distances` (haystack from the
test plays, fresh keys; the same examples for every row).

CPU size (2 cores shared with other jobs at load 17–28): one pathway, in the last block (29),
with a linear (depth-1) Titans memory. The bet: at the last block's input the residual stream
holds the next-token prediction, so at the needle's second statement of the key (where the
windowed model can still copy from the first) it should hold the next digit — a value written
there and read back at the answer is what the answer needs, one block from the head. The forget
gate's bias is `memory.forget_bias` = −8 (α ≈ 3e-4 per token instead of the mixer default 0.018,
whose writes fade to 1% within ~250 tokens); Σθ over a chunk ≤ `memory.chunk_step_max` = 2.

Expected: full attention ≈ 1.0 exact (the frozen model copies the key); window 32 ≈ chance (digit
accuracy ≤ 0.1, exact 0); window + memory above chance only if the pathway learns to store and
recall the key, which may need far more than the CPU-sized number of steps.

Command: `python experiments/adapter.py adapter_passkey`
(results in docs/results/adapters/passkey.{md,json}).
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.description = (
        "Passkey retrieval beyond a sliding attention window: frozen SmolLM2-135M-Instruct "
        "with and without a trained Titans memory pathway (experiments c, d)."
    )
    c.out_dir = "docs/results/adapters"
    c.out_name = "passkey"  # results file stem
    c.haystack = "shakespeare"  # corpus of the haystack (train / test documents)
    c.train_chars = 200_000  # characters of training haystack tokenized
    c.test_chars = 60_000  # characters of held-out haystack tokenized
    c.num_digits = 5  # digits of the key
    c.window = 32  # sliding attention window of the frozen model (tokens a query sees)
    c.max_len = 2048  # full-attention KV slots (unused by the window model's single calls)
    c.layers = (29,)  # blocks that get a memory pathway
    c.variants = {"titans_linear": {"kind": "titans", "depth": 1}}  # label -> pathway
    c.memory = ml_collections.ConfigDict(
        {
            "num_heads": 4,
            "head_dim": 32,
            "chunk_size": 16,
            "chunk_step_max": 2.0,
            "forget_bias": -8.0,
            "gate_floor": 0.05,
        }
    )
    c.steps = 260  # optimizer steps
    c.batch_size = 8  # examples per step
    c.pool_batches = 0  # 0: a fresh batch every step; k > 0: k batches reused for epochs
    c.val_batches = 2  # held-out batches (training distances) for the progress lines
    c.train_length = 80  # tokens per training example
    c.train_distances = (32, 52)  # distances drawn uniformly (inclusive) for training
    c.lr = 3e-3  # AdamW learning rate (global-norm clip 1.0)
    c.log_every = 15  # steps between progress lines
    c.seed = 0  # keys, haystack offsets, pathway init
    c.eval_distances = (48, 96, 192, 416)  # held-out distances; 416 = 8× the longest trained
    c.eval_examples = 8  # held-out examples per distance
    c.eval_batch_size = 8  # examples per evaluation call
    c.eval_prefix = 16  # haystack tokens before the needle in evaluation examples
    c.eval_full_attention = True  # also evaluate the base model with full attention
    return c

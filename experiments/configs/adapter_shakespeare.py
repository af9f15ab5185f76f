"""Adapter experiment (a) + (d): adapt frozen SmolLM2-135M-Instruct on Shakespeare.

Purpose: held-out Shakespeare perplexity of the frozen model vs full fine-tuning of the adapted
blocks vs LoRA (rank matched to the Titans pathway's parameter count) vs each memory pathway
(Titans, self-modifying Titans) vs Hope-Attention CMS levels; the memory's contribution by
ablating it at evaluation time; the mean memory gate per adapted layer.

CPU size (2 shared cores): all 30 layers run, only the last two blocks (28, 29) are adapted;
training windows of 64 tokens, batch 4, `steps` steps of AdamW at lr 1e-3; evaluation on the
first `eval_windows` 128-token windows of the first 60k characters of the test plays.
Expected: every trained variant lowers Shakespeare perplexity a little from the frozen model;
with so few steps the differences between adapters are small and not significant.

Command: `python experiments/adapter.py adapter_shakespeare`
(results in docs/results/adapters/adapter_shakespeare.{md,json}; wall time is in the table).
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.description = "Adapt on Shakespeare; held-out Shakespeare perplexity (experiments a, d)."
    c.out_dir = "docs/results/adapters"
    c.out_name = "adapter_shakespeare"  # results file stem (e.g. adapter_shakespeare_seed1)
    c.variants = ("frozen", "titans", "lora", "full", "self_modifying", "hope_cms")
    c.phases = ("shakespeare",)  # corpora adapted on, in order
    c.layers = (28, 29)  # blocks that get adapters / are fine-tuned
    c.window = 0  # attention window (0: full, as pretrained)
    c.max_len = 512  # KV-cache slots
    c.seq_len = 64  # training window (tokens)
    c.batch_size = 4  # windows per step
    c.steps = 40  # optimizer steps per phase
    c.lr = 1e-3  # AdamW learning rate
    c.seed = 0  # data order, LoRA and memory-pathway init
    c.train_chars = 400_000  # characters of training text tokenized per corpus
    c.test_chars = 60_000  # characters of held-out text tokenized per corpus
    c.eval_seq_len = 128  # evaluation window
    c.eval_windows = 16  # evaluation windows per corpus
    c.cms_periods = (1, 4)  # Hope-Attention CMS: level 0 = pretrained MLP (frozen), level 1 new
    c.memory = ml_collections.ConfigDict(
        {"num_heads": 4, "head_dim": 32, "chunk_size": 16, "gate_floor": 0.05}
    )
    return c

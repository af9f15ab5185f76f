"""A tiny experiment config for the pipeline tests: `tiny_config.py:<model name>`."""

from nestlearn.train.config import base_config


def get_config(arg=None):
    """A few-second run on the synthetic corpus; `arg` names the model (default hope_attention)."""
    c = base_config(arg or "hope_attention")
    c.model.vocab_size = 0
    c.model.d_model = 16
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.max_len = 32
    c.model.chunk_size = 8
    if "cms" in c.model:
        c.model.cms.periods = (1, 3)
        c.model.cms.chunk_sizes = (8, 16)
    c.data.corpus = "synthetic"
    c.data.tokenizer = "char"
    c.data.seq_len = 16
    c.data.batch_size = 4
    c.data.synthetic.num_docs = 12
    c.data.synthetic.doc_words = 200
    c.data.val_fraction = 0.1
    c.data.test_fraction = 0.1
    c.optim.warmup_steps = 2
    c.optim.lr = 1e-2
    c.train.num_steps = 12
    c.train.log_every = 1
    c.train.eval_every = 6
    c.train.eval_batches = 2
    c.train.checkpoint_every = 3
    c.train.progress_bar = False
    c.sample.num_samples = 1
    c.sample.prompt = "a"
    c.sample.max_new_tokens = 8
    return c

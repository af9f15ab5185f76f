"""Adapter experiments on frozen SmolLM2-135M-Instruct (issue 7; see docs/adapters.md).

    python experiments/adapter.py adapter_shakespeare     # (a) + (d)
    python experiments/adapter.py adapter_continual       # (b) + (d)

Loads `experiments/configs/<name>.py::get_config()`, then for every variant in `config.variants`
adapts a fresh copy of the pretrained model on each phase's corpus in turn and reports held-out
perplexity on every phase seen so far (and, for memory pathways, with the memory ablated), plus
the mean memory gate per adapted layer. Writes `<out_dir>/<name>.json` and `<name>.md`.

Variants (all train only the blocks in `config.layers`; everything else stays frozen):
  frozen          the pretrained model, no training
  full            every weight of the chosen blocks (full fine-tuning of those blocks)
  lora            rank-r LoRA on every kernel of the chosen blocks, r matched to the Titans count
  titans          gated Titans memory beside attention (`adapters.add_memory_pathways`)
  self_modifying  gated self-modifying Titans memory beside attention
  hope_cms        Hope-Attention: MLP → CMS from the pretrained MLP, new levels trained by period
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nestlearn.core import Level
from nestlearn.data import load_corpus, split_documents
from nestlearn.models import count_params
from nestlearn.pretrained import adapters, fetch_smollm2, lora, model_from_checkpoint, read_gguf
from nestlearn.pretrained.tokenizer import GGUFTokenizer

ROOT = Path(__file__).resolve().parent


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def corpus_tokens(name: str, tok: GGUFTokenizer, config) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) token streams of a corpus, split by document (as nestlearn.data does)."""
    docs = load_corpus(name)
    split = split_documents(docs, val_fraction=0.05, test_fraction=0.05, seed=0)
    train = "\n\n".join(docs[d] for d in split.train)[: config.train_chars]
    test = "\n\n".join(docs[d] for d in split.test)[: config.test_chars]
    return tok.encode(train), tok.encode(test)


def windows(tokens: np.ndarray, seq_len: int, count: int, rng: np.random.Generator | None):
    n = (len(tokens) - 1) // seq_len
    starts = (
        np.arange(n) * seq_len if rng is None else rng.integers(0, len(tokens) - seq_len - 1, count)
    )
    starts = starts[:count]
    return np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int32)


@nnx.jit
def _loss(model, tokens):
    logits, _ = model(tokens[:, :-1])
    return adapters.lm_loss(logits, tokens[:, 1:])


def perplexity(model, tokens: np.ndarray, config) -> float:
    data = windows(tokens, config.eval_seq_len, config.eval_windows, None)
    losses = [
        float(_loss(model, jnp.asarray(data[i : i + config.batch_size])))
        for i in range(0, len(data), config.batch_size)
    ]
    return math.exp(float(np.mean(losses)))


def layer_regex(layers) -> str:
    return "(" + "|".join(str(i) for i in layers) + ")"


def build_variant(variant: str, base_ck, config):
    """(model, trainable pattern or None, lora factors or None)."""
    model = model_from_checkpoint(base_ck, max_len=config.max_len, window=config.window)
    layers = tuple(config.layers)
    lay = layer_regex(layers)
    mem = config.memory
    if variant in ("titans", "self_modifying"):
        model = adapters.add_memory_pathways(
            model,
            kind=variant,
            layers=layers,
            num_heads=mem.num_heads,
            head_dim=mem.head_dim,
            chunk_size=mem.chunk_size,
            gate_floor=mem.gate_floor,
        )
        return model, r"/memory/|/gate/"
    if variant == "hope_cms":
        model = adapters.convert_to_hope_attention(
            model, layers=layers, periods=tuple(config.cms_periods)
        )
        return model, rf"^blocks/{lay}/cms/levels/[1-9]"
    if variant == "full":
        return model, rf"^blocks/{lay}/"
    if variant in ("frozen", "lora"):
        return model, None
    raise ValueError(f"unknown variant {variant!r}")


def lora_rank_for(budget: int, base_ck, config) -> int:
    hp = base_ck.hparams
    per_rank = len(config.layers) * (
        (hp.d_model + hp.num_heads * hp.head_dim) * 2  # wq, wo
        + (hp.d_model + hp.num_kv_heads * hp.head_dim) * 2  # wk, wv
        + (hp.d_model + hp.ffn_hidden) * 3  # w_in, w_gate, w_out
    )
    return max(1, round(budget / per_rank))


def run(name: str) -> None:
    config = load_config(name)
    out_dir = ROOT.parent / config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = read_gguf(fetch_smollm2())
    tok = GGUFTokenizer.from_metadata(ck.metadata)
    data = {phase: corpus_tokens(phase, tok, config) for phase in config.phases}
    lay = layer_regex(config.layers)
    results = {"config": config.to_dict(), "variants": {}}
    titans_count = None
    for variant in config.variants:
        t0 = time.time()
        model, pattern = build_variant(variant, ck, config)
        graphdef, params, other = nnx.split(model, nnx.Param, ...)
        factors, transform = None, None
        if variant == "lora":
            rank = lora_rank_for(titans_count or 100_000, ck, config)
            pat = rf"^blocks/{lay}/(attn/w[qkvo]|mlp/w_(in|gate|out))/kernel$"
            factors = lora.lora_init(params, pat, rank=rank, seed=config.seed)
            transform = lora.lora_transform(alpha=2.0 * rank)
            trainable, frozen = factors, params
            n_train = lora.lora_param_count(factors)
        elif pattern is not None:
            graphdef, trainable, frozen, other = adapters.split_trainable(model, pattern)
            n_train = count_params(trainable)
        else:
            trainable, n_train = None, 0
        if variant == "titans":
            titans_count = n_train
        record = {"trainable_params": n_train, "phases": []}
        step = None
        if trainable is not None:
            levels = [Level("adapter", None, optax.adamw(config.lr, weight_decay=0.0))]
            if variant == "hope_cms":
                levels = [
                    Level(f"cms_level_{i}", rf"cms/levels/{i}/", optax.adamw(config.lr), period=p)
                    for i, p in enumerate(config.cms_periods)
                    if i > 0
                ]
            step = adapters.make_adapter_step(graphdef, levels, transform=transform)
            opt_state = step.init(trainable)
        rng = np.random.default_rng(config.seed)
        for phase in config.phases:
            train_tokens, _ = data[phase]
            losses = []
            if step is not None:
                for _ in range(config.steps):
                    batch = jnp.asarray(
                        windows(train_tokens, config.seq_len, config.batch_size, rng)
                    )
                    trainable, opt_state, loss = step.step(
                        trainable, opt_state, batch, frozen, other
                    )
                    losses.append(float(loss))
            if variant == "lora":
                eval_model = nnx.merge(graphdef, *transform(trainable, frozen), other)
            elif trainable is not None:
                eval_model = nnx.merge(graphdef, trainable, frozen, other)
            else:
                eval_model = model
            entry = {
                "phase": phase,
                "train_loss_first": losses[:5],
                "train_loss_last": losses[-5:],
                "ppl": {
                    p: perplexity(eval_model, data[p][1], config)
                    for p in config.phases[: config.phases.index(phase) + 1]
                },
            }
            if variant in ("titans", "self_modifying"):
                probe = jnp.asarray(windows(data[phase][1], config.eval_seq_len, 2, None)[:, :-1])
                entry["gates"] = adapters.gate_values(eval_model, probe)
                adapters.set_memory_enabled(eval_model, False)
                entry["ppl_memory_ablated"] = {
                    p: perplexity(eval_model, data[p][1], config) for p in entry["ppl"]
                }
                adapters.set_memory_enabled(eval_model, True)
            record["phases"].append(entry)
            print(variant, json.dumps(entry), flush=True)
        record["wall_s"] = time.time() - t0
        results["variants"][variant] = record
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"{name}.md").write_text(markdown(name, config, results))


def markdown(name: str, config, results) -> str:
    phases = tuple(config.phases)
    lines = [
        f"# {name}",
        "",
        config.description,
        "",
        "Held-out perplexity (test documents) after each phase; `ablated` = memory off.",
        "",
    ]
    head = (
        ["variant", "trainable", "after phase"]
        + [f"ppl {p}" for p in phases]
        + ["ablated ppl (last phase)", "mean gate per layer", "wall s"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rec in results["variants"].items():
        for entry in rec["phases"]:
            ppl = [f"{entry['ppl'][p]:.2f}" if p in entry["ppl"] else "" for p in phases]
            ablated = entry.get("ppl_memory_ablated", {}).get(entry["phase"])
            gates = entry.get("gates")
            lines.append(
                "| "
                + " | ".join(
                    [
                        variant,
                        f"{rec['trainable_params']:,}",
                        entry["phase"],
                        *ppl,
                        "" if ablated is None else f"{ablated:.2f}",
                        "" if not gates else ", ".join(f"{k}: {v:.3f}" for k, v in gates.items()),
                        f"{rec['wall_s']:.0f}",
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(
            "usage: python experiments/adapter.py <config name, e.g. adapter_shakespeare>"
        )
    jax.config.update("jax_default_matmul_precision", "float32")
    run(sys.argv[1])

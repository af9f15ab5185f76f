"""Adapter experiments on frozen SmolLM2-135M-Instruct (see docs/adapters.md).

    python experiments/adapter.py adapter_shakespeare     # (a) + (d)
    python experiments/adapter.py adapter_continual       # (b) + (d)
    python experiments/adapter.py adapter_passkey         # (c) + (d)
    python experiments/adapter.py adapter_passkey steps=20 out_name=trial   # key=value overrides
    python experiments/adapter.py adapter_shakespeare seed=1 out_name=adapter_shakespeare_seed1
    python experiments/adapter.py summarize adapter_shakespeare   # mean ± std over seed files

Loads `experiments/configs/<name>.py::get_config()`, then for every variant in `config.variants`
adapts a fresh copy of the pretrained model on each phase's corpus in turn and reports held-out
perplexity on every phase seen so far (and, for memory pathways, with the memory ablated), plus
the mean memory gate per adapted layer. Writes `<out_dir>/<name>.json` and `<name>.md`.

Experiment (c) (`run_passkey`) is described in `experiments/configs/adapter_passkey.py`.

Variants of (a) and (b) (all but `full_all` train only the blocks in `config.layers`):
  frozen          the pretrained model, no training
  full            every weight of the chosen blocks (full fine-tuning of those blocks)
  full_all        every weight of the model, embedding (= tied head) included
  lora            rank-r LoRA on every kernel of the chosen blocks, r matched to the trainable
                  parameters of the variant `config.lora_match` (default titans)
  titans          gated Titans memory beside attention (`adapters.add_memory_pathways`)
  self_modifying  gated self-modifying Titans memory beside attention
  hope_cms        Hope-Attention: MLP → CMS from the pretrained MLP, new levels trained by period
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nestlearn import tune_host_allocator
from nestlearn.core import Level
from nestlearn.data import load_corpus, split_documents
from nestlearn.eval import compare
from nestlearn.models import count_params
from nestlearn.optim.scheduler import make_train_step
from nestlearn.pretrained import (
    adapters,
    fetch_smollm2,
    lora,
    model_from_checkpoint,
    passkey,
    read_gguf,
)
from nestlearn.pretrained.tokenizer import GGUFTokenizer

ROOT = Path(__file__).resolve().parent


def load_config(name: str, overrides: list[str] = ()):
    """`configs/<name>.py::get_config()` with `key=value` overrides (values as Python literals)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r} must be key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"override {item!r}: unknown key {key!r}")
        try:
            node[leaf] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[leaf] = value
    return config


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


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
            seed=config.seed,
        )
        return model, r"/memory/|/gate/"
    if variant == "hope_cms":
        model = adapters.convert_to_hope_attention(
            model, layers=layers, periods=tuple(config.cms_periods)
        )
        return model, rf"^blocks/{lay}/cms/levels/[1-9]"
    if variant == "full":
        return model, rf"^blocks/{lay}/"
    if variant == "full_all":
        return model, r"."
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


def trainable_count(variant: str, base_ck, config) -> int:
    """Trainable parameters of `variant` (built and discarded; LoRA matches this count)."""
    model, pattern = build_variant(variant, base_ck, config)
    if pattern is None:
        raise ValueError(f"lora_match={variant!r} trains nothing; name an adapter variant")
    return count_params(adapters.split_trainable(model, pattern)[1])


def run(name: str, config) -> None:
    out_dir = ROOT.parent / config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = read_gguf(fetch_smollm2())
    tok = GGUFTokenizer.from_metadata(ck.metadata)
    data = {phase: corpus_tokens(phase, tok, config) for phase in config.phases}
    lay = layer_regex(config.layers)
    results = {"config": config.to_dict(), "variants": {}}
    stem = config.out_name
    saved = out_dir / f"{stem}.json"
    if saved.exists():  # resume: keep the variants finished under this very config
        previous = json.loads(saved.read_text())
        if json.loads(json.dumps(previous["config"])) == json.loads(json.dumps(results["config"])):
            results["variants"] = previous["variants"]
    for variant in config.variants:
        if variant in results["variants"]:
            print(f"skip {variant} (finished in {saved})", flush=True)
            continue
        t0 = time.time()
        model, pattern = build_variant(variant, ck, config)
        graphdef, params, other = nnx.split(model, nnx.Param, ...)
        factors, transform = None, None
        if variant == "lora":
            match = config.get("lora_match", "titans")
            rank = lora_rank_for(trainable_count(match, ck, config), ck, config)
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
        record = {"trainable_params": n_train, "phases": []}
        if variant == "lora":
            record["lora_rank"] = rank
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
        # written after every variant: a crash keeps the finished ones
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / f"{stem}.md").write_text(markdown(stem, config, results))


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


def summarize(name: str, config) -> None:
    """Mean ± std over the seeds found (`<name>.json` is seed 0, `<name>_seed<k>.json` seed k)."""
    out_dir = ROOT.parent / config.out_dir
    files = sorted([out_dir / f"{name}.json", *out_dir.glob(f"{name}_seed*.json")])
    runs = [json.loads(f.read_text()) for f in files if f.exists()]
    seeds = [r["config"]["seed"] for r in runs]
    table: dict[tuple[str, str], dict[str, list[float]]] = {}
    params, walls = {}, {}
    for run_ in runs:
        for variant, rec in run_["variants"].items():
            params[variant] = rec["trainable_params"]
            if rec.get("wall_s") is not None:
                walls.setdefault(variant, []).append(rec["wall_s"])
            for entry in rec["phases"]:
                cell = table.setdefault((variant, entry["phase"]), {})
                for p, v in entry["ppl"].items():
                    cell.setdefault(p, []).append(v)
                for p, v in entry.get("ppl_memory_ablated", {}).items():
                    cell.setdefault(f"{p} ablated", []).append(v)
    phases = list(config.phases)

    def fmt(values):
        if not values:
            return ""
        if len(values) == 1:
            return f"{values[0]:.2f} (1 seed)"
        return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} ({len(values)})"

    head = ["variant", "trainable", "after"] + [f"ppl {p}" for p in phases]
    head += [f"ablated {phases[-1]}" if len(phases) == 1 else "ablated (current phase)", "wall s"]
    lines = [
        f"# {name}: mean ± sample std over seeds {seeds}",
        "",
        "Cells: held-out perplexity, mean ± std (number of seeds). Seeds change the training "
        "windows and the LoRA / memory-pathway initialisation; the frozen model has no seed.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for (variant, phase), cell in table.items():
        lines.append(
            "| "
            + " | ".join(
                [variant, f"{params[variant]:,}", phase]
                + [fmt(cell.get(p, [])) for p in phases]
                + [fmt(cell.get(f"{phase} ablated", []))]
                + [f"{np.mean(walls[variant]):.0f}" if variant in walls else ""]
            )
            + " |"
        )
    if len(phases) > 1:
        lines += ["", f"![stability and plasticity]({name}_stability.png)"]
        plot_stability(runs, phases, out_dir / f"{name}_stability.png")
    (out_dir / f"{name}_seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stability(record: dict, phases: list[str]) -> tuple[float, float]:
    """(plasticity, forgetting) of one variant's run: the mean held-out perplexity of each later
    domain right after its phase, and the mean over the earlier domains of (perplexity after the
    last phase − perplexity right after their own phase)."""
    after = {e["phase"]: e["ppl"] for e in record["phases"]}
    new = [after[p][p] for p in phases[1:]]
    forgot = [after[phases[-1]][p] - after[p][p] for p in phases[:-1]]
    return float(np.mean(new)), float(np.mean(forgot))


def plot_stability(runs: list[dict], phases: list[str], path: Path) -> None:
    """Forgetting against plasticity per variant (`stability`), mean ± std over the seeds."""
    points: dict[str, list[tuple[float, float]]] = {}
    for run_ in runs:
        for variant, rec in run_["variants"].items():
            points.setdefault(variant, []).append(stability(rec, phases))
    compare.plot_points(
        points,
        path,
        xlabel="perplexity on the new domain (left: more plastic)",
        ylabel="rise of earlier domains' perplexity (down: more stable)",
        title="stability vs plasticity (mean ± std over seeds)",
    )


# --- experiment (c): passkey retrieval beyond the attention window ----------------------------


def passkey_eval_batches(prompts, haystack, tok, config) -> dict[int, passkey.PasskeyBatch]:
    """One fixed batch of `eval_examples` examples per evaluation distance (seeded)."""
    rng = np.random.default_rng(config.seed + 1000)
    return {
        d: passkey.passkey_batch(
            rng,
            haystack,
            tok,
            prompts,
            length=passkey.min_length(prompts, d) + config.eval_prefix,
            distances=[d] * config.eval_examples,
        )
        for d in config.eval_distances
    }


def passkey_scores_of(logits_fn, batches) -> dict[str, float]:
    """Mean scores of `logits_fn(*inputs) -> logits [b, n, V]` over [(inputs, targets [b, n])]."""
    sums, count = {}, 0
    for inputs, targets in batches:
        scores = passkey.passkey_scores(logits_fn(*inputs), targets)
        for key, value in scores.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(targets)
        count += len(targets)
    return {key: value / count for key, value in sums.items()}


def minibatches(batch: passkey.PasskeyBatch, size: int):
    """[(tokens, positions), targets] device minibatches of `size` examples."""
    return [
        (
            (jnp.asarray(batch.tokens[i : i + size]), jnp.asarray(batch.positions[i : i + size])),
            jnp.asarray(batch.targets[i : i + size]),
        )
        for i in range(0, len(batch.tokens), size)
    ]


def run_passkey(name: str, config) -> None:
    """Experiment (c): see experiments/configs/adapter_passkey.py."""
    t_start = time.time()
    out_dir = ROOT.parent / config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = read_gguf(fetch_smollm2())
    tok = GGUFTokenizer.from_metadata(ck.metadata)
    train_hay, eval_hay = corpus_tokens(config.haystack, tok, config)
    prompts = passkey.PasskeyPrompts.build(tok, config.num_digits)
    start = min(config.layers)
    base_full = model_from_checkpoint(ck, max_len=config.max_len, window=0)
    base_win = model_from_checkpoint(ck, max_len=config.max_len, window=config.window)
    prefix = nnx.jit(lambda m, t: adapters.hidden_states(m, t, stop=start))
    suffix = nnx.jit(lambda m, x, p: adapters.logits_from(m, x, start=start, positions=p))
    full = nnx.jit(
        lambda m, t, p: adapters.logits_from(
            m, adapters.hidden_states(m, t, stop=0), start=0, positions=p
        )
    )
    evals = passkey_eval_batches(prompts, eval_hay, tok, config)
    results = {
        "config": config.to_dict(),
        "receptive_field_of_stacked_windows": len(base_win.blocks) * (config.window - 1),
        "eval": {},
        "train": {},
    }

    def evaluate(label, logits_fn, inputs):
        t0 = time.time()
        rows = {d: passkey_scores_of(logits_fn, inputs[d]) for d in config.eval_distances}
        results["eval"][label] = {"by_distance": rows, "wall_s": time.time() - t0}
        print(label, json.dumps(rows), f"{time.time() - t0:.0f}s load {load_average()}", flush=True)

    size = config.eval_batch_size
    if config.eval_full_attention:
        tokens = {d: minibatches(b, size) for d, b in evals.items()}
        evaluate("base, full attention", lambda t, p: full(base_full, t, p), tokens)
    base_full = None  # free its weights
    t0 = time.time()
    hidden = {  # the stream entering block `start` of the windowed model, shared by all rows
        d: [((prefix(base_win, t), p), y) for (t, p), y in minibatches(b, size)]
        for d, b in evals.items()
    }
    results["eval_prefix_wall_s"] = time.time() - t0
    evaluate(f"base, window {config.window}", lambda x, p: suffix(base_win, x, p), hidden)

    # The frozen blocks below the first pathway do not depend on the trained parameters: run
    # them outside the differentiated step, once per training batch (pool_batches = 0: a fresh
    # batch every step) or once over a fixed pool that is reused for several epochs.
    t0 = time.time()
    rng = np.random.default_rng(config.seed)
    lo, hi = config.train_distances

    def prefixed(haystack):
        batch = passkey.passkey_batch(
            rng,
            haystack,
            tok,
            prompts,
            length=config.train_length,
            distances=rng.integers(lo, hi + 1, config.batch_size),
        )
        x = prefix(base_win, jnp.asarray(batch.tokens))
        return x, jnp.asarray(batch.positions), jnp.asarray(batch.targets)

    pool = [prefixed(train_hay) for _ in range(config.pool_batches)]
    val_pool = [prefixed(eval_hay) for _ in range(config.val_batches)]
    results["pool_wall_s"] = time.time() - t0
    print(f"pool of {len(pool)} batches: {time.time() - t0:.0f}s, load {load_average()}")

    mem = config.memory
    for label, variant in config.variants.items():
        t0 = time.time()
        model = adapters.add_memory_pathways(
            base_win,
            kind=variant.kind,
            layers=tuple(config.layers),
            num_heads=mem.num_heads,
            head_dim=mem.head_dim,
            chunk_size=mem.chunk_size,
            depth=variant.depth,
            chunk_step_max=mem.chunk_step_max,
            forget_bias=mem.forget_bias,
            gate_floor=mem.gate_floor,
            seed=config.seed,
        )
        graphdef, trainable, frozen, other = adapters.split_trainable(model, r"/memory/|/gate/")

        def loss_fn(trainable, batch, frozen, other, graphdef=graphdef):
            x, positions, targets = batch
            model = nnx.merge(graphdef, trainable, frozen, other)
            logits = adapters.logits_from(model, x, start=start, positions=positions)
            scores = passkey.passkey_scores(logits, targets)
            return scores["loss"], scores["digit_accuracy"]

        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(config.lr, weight_decay=0.0))
        train = make_train_step(loss_fn, [Level("adapter", None, tx)], has_aux=True, donate=False)
        validate = jax.jit(loss_fn)
        opt_state = train.init(trainable)
        order = np.random.default_rng(config.seed + 1)
        log, val_log = [], []
        for i in range(config.steps):
            if not pool:  # a fresh batch every step
                batch = prefixed(train_hay)
            else:
                if i % len(pool) == 0:
                    epoch = order.permutation(len(pool))
                batch = pool[epoch[i % len(pool)]]
            trainable, opt_state, loss, accuracy = train.step(
                trainable, opt_state, batch, frozen, other
            )
            log.append((float(loss), float(accuracy)))
            if (i + 1) % config.log_every == 0:
                recent = np.mean(log[-config.log_every :], axis=0)
                val = np.mean([validate(trainable, b, frozen, other) for b in val_pool], axis=0)
                val_log.append((i + 1, *map(float, val)))
                print(
                    f"{label} step {i + 1}: train loss {recent[0]:.3f} digit acc {recent[1]:.3f}; "
                    f"held-out loss {val[0]:.3f} digit acc {val[1]:.3f} "
                    f"({time.time() - t0:.0f}s, load {load_average()})",
                    flush=True,
                )
        trained = nnx.merge(graphdef, trainable, frozen, other)
        train_s = time.time() - t0
        probe = hidden[config.eval_distances[-1]][0][0][0]
        results["train"][label] = {
            "trainable_params": count_params(trainable),
            "train_loss_acc_by_step": log,
            "heldout_step_loss_acc": val_log,
            "gates": adapters.gate_values_from(trained, probe, start=start),
            "train_wall_s": train_s,
        }
        print(label, "gates", results["train"][label]["gates"], flush=True)
        logits_fn = functools.partial(suffix, trained)
        evaluate(f"window {config.window} + {label}", logits_fn, hidden)
        adapters.set_memory_enabled(trained, False)
        evaluate(f"window {config.window} + {label}, memory ablated", logits_fn, hidden)
    results["wall_s"] = time.time() - t_start
    results["load_average_end"] = load_average()
    stem = config.out_name
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(passkey_markdown(config, results))


def passkey_markdown(config, results) -> str:
    distances = list(config.eval_distances)
    lines = [
        "# Passkey retrieval beyond the attention window (experiments c, d)",
        "",
        config.description,
        "",
        f"Window {config.window} tokens; {config.eval_examples} held-out examples per distance "
        f"(haystack: {config.haystack} test documents); distance = first answer position − "
        "position of the needle's last key digit. Cells: exact-match (all "
        f"{config.num_digits} digits, = greedy decode) / digit accuracy / loss per digit (nats).",
        "",
        "| model | " + " | ".join(f"distance {d}" for d in distances) + " | eval wall s |",
        "|---|" + "---|" * (len(distances) + 1),
    ]
    for label, entry in results["eval"].items():
        cells = []
        by_distance = {int(d): row for d, row in entry["by_distance"].items()}
        for d in distances:
            row = by_distance[d]
            cells.append(f"{row['exact']:.2f} / {row['digit_accuracy']:.2f} / {row['loss']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry['wall_s']:.0f} |")
    lines += [
        "",
        "| pathway | trainable | train wall s | mean gate per layer | last 10 steps "
        "loss / digit acc |",
        "|---|---|---|---|---|",
    ]
    for label, entry in results["train"].items():
        last = np.mean(entry["train_loss_acc_by_step"][-10:], axis=0)
        gates = ", ".join(f"{k}: {v:.3f}" for k, v in entry["gates"].items())
        lines.append(
            f"| {label} | {entry['trainable_params']:,} | {entry['train_wall_s']:.0f} | {gates} | "
            f"{last[0]:.3f} / {last[1]:.3f} |"
        )
    lines += [
        "",
        f"Total wall {results['wall_s']:.0f} s; load average at the end "
        f"{results['load_average_end']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    if len(sys.argv) < 2:
        raise SystemExit(
            "usage: python experiments/adapter.py <config name, e.g. adapter_shakespeare> "
            "[key=value ...]"
        )
    jax.config.update("jax_default_matmul_precision", "float32")
    if sys.argv[1] == "summarize":  # python experiments/adapter.py summarize adapter_shakespeare
        summarize(sys.argv[2], load_config(sys.argv[2]))
    elif sys.argv[1] == "adapter_passkey" or sys.argv[1].startswith("adapter_passkey_"):
        run_passkey(sys.argv[1], load_config(sys.argv[1], sys.argv[2:]))
    else:
        run(sys.argv[1], load_config(sys.argv[1], sys.argv[2:]))

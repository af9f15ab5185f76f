"""Benchmark of the MLP-memory op: forward and forward+backward time per implementation.

    python -m nestlearn.kernels.mlp_memory.bench --t 2048 8192 --d 128 --hidden 256 --heads 8 \\
        --dtype bfloat16 --implementations xla pallas_triton

On CPU the Pallas backends only run interpreted (``--interpret``, tiny shapes).
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import benchmarking
from nestlearn.kernels.mlp_memory.api import mlp_memory


def _inputs(key, b, t, h, d, hidden, dtype):
    ks = jax.random.split(key, 8)
    normal = lambda k, shape, scale: (scale * jax.random.normal(k, shape)).astype(dtype)
    args = dict(
        q=normal(ks[0], (b, t, h, d), 1.0),
        k=normal(ks[1], (b, t, h, d), d**-0.5),
        v=normal(ks[2], (b, t, h, d), 1.0),
        theta=jax.random.uniform(ks[3], (b, t, h), dtype, 0.01, 0.1),
        alpha=jax.random.uniform(ks[4], (b, t, h), dtype, 0.0, 0.1),
        eta=jax.random.uniform(ks[5], (b, t, h), dtype, 0.0, 0.9),
    )
    params = {
        "w1": normal(ks[6], (h, d, hidden), hidden**-0.5).astype(jnp.float32),
        "w2": normal(ks[7], (h, hidden, d), d**-0.5).astype(jnp.float32),
    }
    return args, params


def bench(*, implementation, b, t, h, d, hidden, dtype, chunk_size, interpret, repeats):
    """Seconds per call: (forward, forward + backward)."""
    args, params = _inputs(jax.random.key(0), b, t, h, d, hidden, dtype)
    if interpret and implementation == "pallas_tpu":
        interpret = pltpu.InterpretParams()

    def forward(args, params):
        return mlp_memory(
            **args,
            params=params,
            chunk_size=chunk_size,
            residual=True,
            implementation=implementation,
            interpret=interpret,
        )

    def loss(args, params):
        o, _ = forward(args, params)
        return jnp.sum(o.astype(jnp.float32))

    fwd = benchmarking.seconds_per_call(jax.jit(forward), args, params, repeats=repeats)
    bwd = benchmarking.seconds_per_call(
        jax.jit(jax.grad(loss, argnums=(0, 1))), args, params, repeats=repeats
    )
    return fwd, bwd


def main(argv=None):
    p = benchmarking.parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    a = p.parse_args(argv)
    benchmarking.report(
        a,
        bench,
        b=a.batch,
        h=a.heads,
        d=a.d,
        dtype=jnp.dtype(a.dtype),
        chunk_size=a.chunk,
        interpret=a.interpret,
        repeats=a.repeats,
        hidden=a.hidden,
    )


if __name__ == "__main__":
    main()

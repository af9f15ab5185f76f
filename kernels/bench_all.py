"""Every op benchmark in one run, written to ``docs/results/kernels/<device>.json``.

The one command for a machine with a GPU or TPU (run from the repository root):

    python -m nestlearn.kernels.bench_all

It measures the device's matmul and copy ceilings once, then times forward and forward+backward
of each op against its XLA reference at the benchmark shape (T ∈ {2048, 8192}, d = 128, 8 heads,
batch 1, bf16, chunk 64): ``gated_delta`` without and with momentum, ``mlp_memory`` (residual,
hidden 256), and Hope's self-modifying memory layer with its generators and output memory on the
kernels (:mod:`nestlearn.kernels.self_modifying_bench`, per-head width ``--sm_d`` 32). It prints one
table (:mod:`nestlearn.kernels.benchmarking`) and writes the JSON to ``--out`` (default
``docs/results/kernels/<device kind>.json``). A backend that fails is recorded as an error row;
the run goes on. Every flag of the op benchmarks applies (``--t``, ``--d``, ``--heads``,
``--chunk``, ``--dtype``, ``--repeats``, ``--implementations``, ``--hidden``, ``--backward``,
``--sm_d``, ``--sm_variant``, and the gated-delta tiling sweeps ``--block_v`` / ``--num_warps``);
``--quick`` is the CPU smoke mode (tiny shapes, the Triton kernel interpreted).
"""

import pathlib

from nestlearn.kernels import benchmarking, self_modifying_bench
from nestlearn.kernels.gated_delta import bench as gated_delta_bench
from nestlearn.kernels.mlp_memory import bench as mlp_memory_bench

RESULTS_DIR = pathlib.Path("docs/results/kernels")


def main(argv=None) -> dict:
    """Runs every op's benchmark; returns the result document that was written."""
    p = benchmarking.parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the MLP memory")
    gated_delta_bench.add_tiling_flags(p)
    self_modifying_bench.add_flags(p)
    a = benchmarking.finish_args(p.parse_args(argv), argv)
    if a.out is None:
        a.out = str(RESULTS_DIR / f"{benchmarking.device_slug()}.json")
    cases = [
        *gated_delta_bench.cases(a, momentum=False),
        *gated_delta_bench.cases(a, momentum=True),
        *mlp_memory_bench.cases(a),
        *self_modifying_bench.cases(a),
    ]
    result = benchmarking.run(cases, a)
    result["args"] = {k: v for k, v in vars(a).items() if k != "out"}
    benchmarking.report(result, a.out)
    return result


if __name__ == "__main__":
    main()

"""experiments/model_benchmark.py: ratios to the reference and the crossover length."""

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("model_benchmark")


def test_ratios_are_per_shape_and_the_crossover_is_the_first_faster_length(bench):
    def row(model, shape, tps, gflops):
        return {"model": model, "shape": shape, "tokens_per_s": tps, "achieved_gflops": gflops}

    results = [
        row("transformer_pp", "long_1k", 1000.0, 50.0),
        row("hope", "long_1k", 500.0, 10.0),
        row("transformer_pp", "long_4k", 400.0, 40.0),
        row("hope", "long_4k", 480.0, 10.0),
        {"model": "transformer_pp", "shape": "long_16k", "error": "out of memory"},
        row("hope", "long_16k", 470.0, 10.0),
        row("gated_deltanet", "long_1k", 900.0, 20.0),
    ]
    bench.add_ratios(results, "transformer_pp")
    assert results[1]["vs_reference"] == 0.5 and results[1]["flops_vs_reference"] == 0.2
    assert results[3]["vs_reference"] == 1.2
    assert "vs_reference" not in results[5]  # no reference row at 16K
    lengths = bench.crossover(results, "transformer_pp", bench.LONG_SHAPES)
    assert lengths == {"hope": 4096, "gated_deltanet": None}

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


def test_a_row_times_the_library_train_step_with_the_instruments_share(bench):
    """A memory model's row adds one call of the instruments per `train.log_every` steps to the
    train step's time; Transformer++ has no in-context memory to instrument."""
    shape = dict(d_model=16, num_layers=1, num_heads=2, vocab_size=32, seq_len=16, batch=2)
    memory = bench.benchmark("linear_attention", shape, steps=2)
    attention = bench.benchmark("transformer_pp", shape, steps=2)
    assert memory["instrument_ms"] > 0 and attention["instrument_ms"] == 0
    assert memory["log_every"] == 10
    for row in (memory, attention):
        assert row["tokens_per_s"] == pytest.approx(32 / (row["step_ms"] / 1e3))
        assert row["flops_per_token"] > 0 and row["final_loss"] > 0


def test_compare_options_times_two_compilations_of_the_same_step(bench, monkeypatch):
    """Both executables train (their own donated states) and the row gives their ratio; outside
    a process with XLA's defaults (`run_isolated` starts one) it refuses to run."""
    shape = dict(d_model=16, num_layers=1, num_heads=2, vocab_size=32, seq_len=16, batch=2)
    monkeypatch.delenv(bench.xla_options.ENV, raising=False)
    with pytest.raises(RuntimeError, match="NESTLEARN_XLA_CPU_OPTIONS=0"):
        bench.compare_options("linear_attention", shape, rounds=1)
    monkeypatch.setenv(bench.xla_options.ENV, "0")
    row = bench.compare_options("linear_attention", shape, rounds=2)
    assert row["without_tokens_per_s"] > 0 and row["with_tokens_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["with_tokens_per_s"] / row["without_tokens_per_s"])

"""The benchmark command, `python -m fastbp.bench`: runs end to end on a tiny config, writes the
fields the README's tables are made of, and rejects bad arguments. (Timings are not checked:
they belong to the benchmark, not to a pass/fail test.)"""
import json
import subprocess
import sys

import pytest

from fastbp import bench


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastbp.bench", *args], capture_output=True,
                          text=True, timeout=600)


def test_bench_writes_every_column_without_torch_or_jax(tmp_path):
    out = tmp_path / "bench.json"
    result = _run("--threads", "1", "--configs", "8-16-4:8,6-5:3", "--min-time", "0.01",
                  "--no-torch", "--no-jax", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["threads"] == 1
    assert [row["config"] for row in data["configs"]] == ["8-16-4:8", "6-5:3"]
    first = data["configs"][0]
    assert first["params"] == (8 + 1) * 16 + (16 + 1) * 4
    for key in ("step_us", "fit_step_us", "gflops", "peak_gflops", "percent_of_peak",
                "numpy_gemm_us", "percent_of_gemm"):
        assert first[key] > 0, key
    assert "torch_us" not in first and "jax_us" not in first
    assert first["gflops"] == pytest.approx(6 * first["params"] * 8 / first["fit_step_us"] / 1e3)
    assert "8-16-4:8" in result.stdout  # the table is printed too


@pytest.mark.parametrize("text", ["784-10", "784:128", "784-x:1", "1:1", "5-0:4", "5-3:0"])
def test_bad_configs_are_refused(text):
    with pytest.raises(Exception, match="bad config"):
        bench.parse_config(text)


def test_bad_thread_count_is_refused():
    result = _run("--threads", "100000", "--configs", "8-4:2", "--no-torch", "--no-jax")
    assert result.returncode == 2 and "--threads" in result.stderr


def test_interleaved_times_takes_turns():
    """Every round runs each callable once (an untimed settling run, then the timed one) before
    the next round starts, so that the figures of one round are taken moments apart."""
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved_times(fns, min_time=0.0, rounds=4)
    assert {name: len(runs) for name, runs in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for runs in times.values() for t in runs)
    # Calibration: two warm-up calls and one timed call each; then per round, per callable,
    # one settling call and one timed call (min_time 0 means one call per run).
    calibration = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert log == calibration + ["a", "a", "b", "b", "c", "c"] * 4


def test_bench_with_adam_writes_its_columns(tmp_path):
    """--optimizer adam: Adam's step beside SGD's, the update pass and the copy of its bytes
    (with PyTorch, its default and fused Adam and its SGD)."""
    out = tmp_path / "bench.json"
    result = _run("--threads", "1", "--configs", "8-16-4:8", "--min-time", "0.01", "--no-jax",
                  "--optimizer", "adam", "--json", str(out))
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())["configs"][0]
    assert row["optimizer"] == "adam"
    for key in ("sgd_fit_step_us", "cost_vs_sgd", "update_us", "copy_us", "update_gb_per_s",
                "percent_of_copy"):
        assert row[key] > 0, key
    assert row["update_gb_per_s"] == pytest.approx(28 * row["params"] / row["update_us"] / 1e3)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    for key in ("torch_us", "torch_fused_us", "speedup_vs_torch_fused", "sgd_speedup_vs_torch"):
        assert row[key] > 0, key


def test_sklearn_bench_counts_the_products_of_a_fit():
    from fastbp import bench_sklearn
    # 4-3-2 per row: forward 4*3 + 3*2 and weight gradients as many multiply-adds, input
    # gradient of the second layer only (3*2): 42, at 2 flops each, for 5 rows and 2 epochs.
    assert bench_sklearn.fit_flops([4, 3, 2], rows=5, epochs=2) == 2 * 42 * 5 * 2


def test_sklearn_bench_writes_its_ceiling(tmp_path):
    pytest.importorskip("sklearn")
    from fastbp import bench_sklearn
    out = tmp_path / "sk.json"
    result = subprocess.run([sys.executable, "-m", "fastbp.bench_sklearn", "--repeats", "1",
                             "--threads", "1", "--json", str(out)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "at most x" in result.stdout and "at peak x" in result.stdout
    cases = json.loads(out.read_text())["cases"]
    assert [(c["case"], c["solver"]) for c in cases] == [("digits", "adam"), ("digits", "sgd")]
    for case in cases:
        assert case["sizes"] == [64, 100, 10]
        assert case["products_s"] > 0
        assert case["speedup_ceiling"] == pytest.approx(case["sklearn_fit_s"] / case["products_s"])
        flops = bench_sklearn.fit_flops([64, 100, 10], case["train_rows"], case["epochs"])
        assert case["peak_s"] == pytest.approx(flops / case["peak_gflops"] / 1e9)
        assert case["speedup_ceiling_at_peak"] == pytest.approx(case["sklearn_fit_s"]
                                                                / case["peak_s"])


def test_asv_suite_kernel_calls_match_the_entry_points(monkeypatch):
    """benchmarks/common.Net calls kernels.entry's flat entry points directly: after a change
    of their parameters it must still run them and compute what the model's own calls do."""
    import pathlib
    import numpy as np
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import common
    net = common.Net([6, 5, common.N_CLASSES], 4, "float64")
    model = net.model
    loss = net.loss_and_grad()
    grads = model.grads.copy()
    assert loss == model.loss_and_grad(net.X, net.y) and np.array_equal(grads, model.grads)
    np.testing.assert_array_equal(net.forward(), model.forward(net.X))
    before = model.params.copy()
    net.train_step()
    assert not np.array_equal(before, model.params)


def test_load_bench_takes_turns_and_reports_each_setting(monkeypatch):
    """python -m fastbp.bench_load: every setting runs once per round in each condition, the
    busy runs beside spinning processes that are stopped after each run, and the table gives
    each setting's ratio to the best fixed count."""
    from fastbp import bench_load
    runs, spinners = [], []

    class Spinner:
        def __init__(self):
            self.killed = False
            spinners.append(self)

        def kill(self):
            self.killed = True

        def wait(self):
            assert self.killed

    def train_seconds(threads, options=()):
        busy = bool(spinners) and not spinners[-1].killed
        runs.append((threads, busy, tuple(options)))
        return {None: 1.0, 1: 1.0, 2: 0.5}[threads] * (3 if busy and threads == 2 else 1)
    monkeypatch.setattr(bench_load, "_train_seconds", train_seconds)
    monkeypatch.setattr(bench_load, "_busy", lambda n: [Spinner() for _ in range(n)])
    monkeypatch.setattr(bench_load.time, "sleep", lambda s: None)
    times = bench_load.measure([None, 1, 2], 2, 1, ["--epochs", "1"], log=lambda t: None)
    assert times == {"quiet": {"None": [1.0, 1.0], "1": [1.0, 1.0], "2": [0.5, 0.5]},
                     "busy": {"None": [1.0, 1.0], "1": [1.0, 1.0], "2": [1.5, 1.5]}}
    assert [r[0] for r in runs[:6]] == [None, 1, 2, None, 1, 2]
    assert [r[0] for r in runs[6:9]] == [2, 1, None]        # the next round in reverse
    assert [r[1] for r in runs[:6]] == [False] * 3 + [True] * 3
    assert all(r[2] == ("--epochs", "1") for r in runs) and all(s.killed for s in spinners)
    lines = []
    bench_load.table(times, log=lines.append)
    assert any(line.startswith("quiet  default") and "2.00x" in line for line in lines)
    assert any(line.startswith("busy   default") and "1.00x" in line for line in lines)

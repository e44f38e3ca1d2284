"""Data-parallel training over MPI (fit's comm, mpiexec -n N fastbp train).

The cases of tests/mpi_cases.py run under ``mpiexec -n 2`` and ``-n 3`` (one launch each) and
are compared here with the same fits in one process: parameters to 1e-9 relative in float64
(only the order of the sums differs), bitwise equal on every rank. Without mpi4py and its
mpiexec (pip install ".[mpi]") these tests skip; the in-process checks of the arguments run
everywhere.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fastbp
from fastbp import cli, distributed

sys.path.insert(0, str(Path(__file__).parent))
import mpi_cases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI = MPIEXEC is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec "
                               "(pip install '.[mpi]')")
LAUNCH_TIMEOUT = 600   # a bound on a hang, not a timing: the launches take seconds warm


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mpiexec(n, args, timeout=LAUNCH_TIMEOUT, **kwargs):
    return subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True,
                          timeout=timeout, env=kwargs.pop("env", _env()), **kwargs)


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks_run(request, tmp_path_factory):
    """Every case of mpi_cases, run once under mpiexec -n N: (N, the folder of results)."""
    if not HAVE_MPI:
        pytest.skip("needs mpi4py and mpiexec (pip install '.[mpi]')")
    out = tmp_path_factory.mktemp(f"mpi{request.param}")
    done = mpiexec(request.param, [sys.executable, str(Path(mpi_cases.__file__)), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return request.param, out


@needs_mpi
@pytest.mark.parametrize("case", list(mpi_cases.CASES))
def test_ranks_train_as_one_process(ranks_run, case):
    n, out = ranks_run
    model, history = mpi_cases.train(case, None)
    ranks = [np.load(out / f"{case}-{rank}.npz") for rank in range(n)]
    for result in ranks[1:]:   # replicas: bitwise the same, running statistics too
        np.testing.assert_array_equal(result["params"], ranks[0]["params"])
        np.testing.assert_array_equal(result["running"], ranks[0]["running"])
        assert int(result["passes"]) == model.training_passes
    first = fastbp.MLP(model.sizes, activation=model.activations[0], dtype=model.dtype, seed=3,
                       norm=model.norm)
    assert not np.allclose(model.params, first.params)   # it trained
    if case in mpi_cases.BATCH_STATISTICS_APART:
        assert not np.allclose(ranks[0]["running"], first.engine.running)   # and folded in
        return
    if case in mpi_cases.FLOAT32_CASES:
        assert str(ranks[0]["stop_reason"]) == history.stop_reason
        np.testing.assert_allclose(ranks[0]["loss"], history["loss"], rtol=1e-3)
        scale = np.max(np.abs(model.params))
        assert np.max(np.abs(ranks[0]["params"] - model.params)) <= 1e-2 * scale
        return
    scale = np.max(np.abs(model.params))
    assert np.max(np.abs(ranks[0]["params"] - model.params)) <= 1e-9 * scale
    np.testing.assert_allclose(ranks[0]["loss"], history["loss"], rtol=1e-9)
    np.testing.assert_allclose(ranks[0]["val_loss"], history.get("val_loss", []), rtol=1e-9)
    np.testing.assert_allclose(ranks[0]["accuracy"], history.get("accuracy", []), rtol=1e-12)
    assert str(ranks[0]["stop_reason"]) == history.stop_reason
    assert int(ranks[0]["best_epoch"]) == (-1 if history.best_epoch is None
                                           else history.best_epoch)


@pytest.mark.parametrize("case", [name for name in mpi_cases.CASES if "clip" in name])
def test_the_clipped_cases_clip(case):
    """(So that their comparison covers the norm of the summed gradient.)"""
    model, history = mpi_cases.train(case, None)
    optimizer = mpi_cases.CASES[case][0](model)
    assert max(history["grad_norm"]) > optimizer.clip_norm


def test_the_early_stopping_case_stops_early():
    """(So that its comparison covers a restore of the best weights.)"""
    _, history = mpi_cases.train("early_stopping", None)
    assert history.stop_reason == "early_stopping"


@needs_mpi
@pytest.mark.parametrize("case, words", [
    ("other_model", "model sizes"), ("other_data", "X and y"),
    ("other_batch_size", "batch_size"), ("bad_epochs_on_one_rank", "epochs"),
    ("no_shard_validation_fraction", "validation_fraction"), ("seed_on_some_ranks", "seed"),
    ("shard_on_one_rank", "shard"), ("shard_not_a_bool_on_one_rank", "shard"),
    ("weights_on_one_rank", "sample_weight"), ("optimizer_epochs_differ", "initial_epoch"),
    ("schedule_differs", "schedule"), ("bad_initial_step", "initial_step"),
    ("empty_part", "part has no rows"),
    ("validation_fraction_without_seed", None), ("a_part_weighs_0", None),
    ("user_schedule", None), ("threads_chosen_on_one_rank", None)])
def test_every_rank_refuses(ranks_run, case, words):
    """Each rank raised (words: in every rank's message), or none did (words None)."""
    n, out = ranks_run
    errors = [str(np.load(out / f"refusal-{case}-{rank}.npz")["error"]) for rank in range(n)]
    for rank, error in enumerate(errors):
        if words is None:
            assert error == "none", (rank, error)
        else:
            assert error != "none" and words in error, (rank, error)


@needs_mpi
def test_each_rank_uses_its_share_of_the_cores(tmp_path):
    script = ("import sys, numba, numpy as np, fastbp; from mpi4py import MPI\n"
              "m = fastbp.MLP([3, 4, 2]); seen = []\n"
              "class Threads:\n"
              "    def on_epoch_end(self, epoch, history, model):\n"
              "        seen.append(numba.get_num_threads())\n"
              "fastbp.fit(m, np.ones((8, 3)), np.zeros(8, int), fastbp.SGD(m, lr=0.1), "
              "epochs=1, batch_size=4, seed=0, comm=MPI.COMM_WORLD, callbacks=[Threads()])\n"
              "with open(f'{sys.argv[1]}/{MPI.COMM_WORLD.Get_rank()}', 'w') as f:\n"
              "    f.write(f'{seen[0]} {numba.get_num_threads()}')\n")
    env = {k: v for k, v in _env().items() if k != "NUMBA_NUM_THREADS"}
    done = mpiexec(3, [sys.executable, "-c", script, str(tmp_path)], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    share = max(1, min(len(os.sched_getaffinity(0)) // 3, numba.config.NUMBA_NUM_THREADS))
    during_and_after = [tuple(map(int, (tmp_path / str(rank)).read_text().split()))
                        for rank in range(3)]
    assert during_and_after == [(share, numba.config.NUMBA_NUM_THREADS)] * 3


@needs_mpi
@pytest.mark.parametrize("kind", ["raise", "begin", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, kind):
    """An exception (in a callback at an epoch's end, or at the start of training), or a killed
    process, on rank 1 alone: the job ends with a non-zero status (a hang would reach the
    timeout and fail the test)."""
    done = mpiexec(2, [sys.executable, str(Path(mpi_cases.__file__)), str(tmp_path), "--fail",
                       kind], timeout=300)
    assert done.returncode != 0
    if kind != "kill":
        assert "rank 1 of 2 failed" in done.stderr
        assert "a callback failed on rank 1" in done.stderr


def _cli_json(result):
    lines = [line for line in result.stdout.split("\n") if line.strip()]
    assert len(lines) == 1, result.stdout   # one report: rank 0's
    return json.loads(lines[0])


@needs_mpi
def test_mpiexec_fastbp_train(tmp_path):
    args = ["train", "--epochs", "4", "--json", "--quiet"]
    alone = subprocess.run([sys.executable, "-m", "fastbp", *args, "--threads", "1"],
                           capture_output=True, text=True, env=_env(), timeout=LAUNCH_TIMEOUT)
    together = mpiexec(2, [sys.executable, "-m", "fastbp", *args, "--save",
                           str(tmp_path / "m.npz")], cwd=tmp_path)
    assert together.returncode == 0, together.stderr[-3000:]
    one, two = _cli_json(alone), _cli_json(together)
    share = max(1, min(len(os.sched_getaffinity(0)) // 2, numba.config.NUMBA_NUM_THREADS))
    assert (one["ranks"], two["ranks"], two["threads"]) == (1, 2, share)
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.005
    np.testing.assert_allclose(two["history"]["loss"], one["history"]["loss"], rtol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]   # written once, by rank 0
    assert fastbp.load(tmp_path / "m.npz").sizes == [64, 128, 10]


@needs_mpi
def test_mpiexec_fastbp_train_refusal_is_one_line(tmp_path):
    done = mpiexec(2, [sys.executable, "-m", "fastbp", "train", "--data",
                       str(tmp_path / "missing.csv")])
    assert done.returncode == 2
    lines = [line for line in done.stderr.split("\n") if line.strip()]
    assert len(lines) == 1 and "missing.csv" in lines[0], done.stderr


# A bound on a hang: these launches stop before training, in a second or two.
REFUSAL_TIMEOUT = 120


def mpiexec_each(*rank_args, cwd=None):
    """mpiexec with one rank per argument list (MPMD: -n 1 A : -n 1 B ...), in a session of
    its own, killed whole (ranks too) if it outlives REFUSAL_TIMEOUT: (status, stdout,
    stderr), status None for a hang."""
    command = [MPIEXEC]
    for rank, args in enumerate(rank_args):   # (by position: two ranks may share a list)
        command += ([":"] if rank else []) + ["-n", "1", sys.executable, "-m", "fastbp", *args]
    return run_or_kill(command, cwd=cwd)


def run_or_kill(command, cwd=None):
    """Run an mpiexec command line in a session of its own, killed whole (ranks too) if it
    outlives REFUSAL_TIMEOUT: (status, stdout, stderr), status None for a hang."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=REFUSAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


@needs_mpi
@pytest.mark.parametrize("bad_rank", [0, 1])
def test_a_rank_refusing_its_options_ends_every_rank(bad_rank):
    """One rank's bad option: that rank says why, on stderr, and every rank exits 2 (rank 0,
    when it is not the one, names it), rather than the others waiting for it forever."""
    ranks = [["train", "--epochs", "1"], ["train", "--epochs", "1"]]
    ranks[bad_rank] = ["train", "--epochs", "x"]
    status, out, err = mpiexec_each(*ranks)
    assert status == 2, err
    # (Counted in the whole text: mpiexec may interleave the ranks' lines.) The failing rank's
    # own line, and rank 0's report of it when rank 0 is not the one.
    said = err.count("fastbp train: argument --epochs: expected an integer, got 'x'")
    assert said == (1 if bad_rank == 0 else 2), err
    if bad_rank != 0:
        assert f"rank {bad_rank} of 2 failed" in err, err
    assert out == ""


HELP_REFUSED = "fastbp: --help and --version are for one process; give them without mpiexec"


@needs_mpi
@pytest.mark.parametrize("asking", [(1, ["train", "--help"]), (0, ["--version"]),
                                    ("all", ["train", "--help"])],
                         ids=["--help on rank 1", "--version on rank 0", "--help on all"])
def test_help_or_version_under_mpiexec_ends_every_rank(asking):
    """argparse prints --help or --version and exits the process given it; under mpiexec the
    ranks not given it waited for that one for ever. Now every rank refuses them (exit 2),
    printing no help: rank 0 says why (and a rank given it alone says so too)."""
    rank, option = asking
    ranks = [option, option] if rank == "all" else [["train", "--epochs", "1"]] * 2
    if rank != "all":
        ranks[rank] = option
    status, out, err = mpiexec_each(*ranks)
    assert status == 2, err
    # (The ranks' stderr may interleave within a line: count the messages, not the lines.)
    assert err.count(HELP_REFUSED) == (2 if rank == 1 else 1), err
    assert err.count("\n") == err.count(HELP_REFUSED), err
    if rank == 1:
        assert "rank 1 of 2 failed" in err, err
    assert out == "" and "Traceback" not in err


@needs_mpi
@pytest.mark.parametrize("option", [["--save", "m.npz"], ["--plot", "p.png"], ["--json"]])
def test_an_option_given_to_one_rank_only_is_refused(tmp_path, option):
    """Rank 0 alone writes the outputs: an output option given to another rank only would be
    lost, so options that differ are refused on every rank, naming the option."""
    status, out, err = mpiexec_each(["train", "--epochs", "1"],
                                    ["train", "--epochs", "1", *option], cwd=tmp_path)
    assert status == 2, err
    lines = [line for line in err.split("\n") if line.strip()]
    assert len(lines) == 1 and f"different options: {option[0]} " in lines[0], err
    assert out == "" and os.listdir(tmp_path) == []


@needs_mpi
def test_ranks_may_differ_in_threads_alone():
    status, out, err = mpiexec_each(["train", "--epochs", "1", "--quiet", "--threads", "1"],
                                    ["train", "--epochs", "1", "--quiet"])
    assert status == 0, err


# Each rank fits 600 rows; rank 1's differ from rank 0's in row 1 alone, which the old check
# (256 evenly spaced rows of X: 0, 2, 4, 7, ...) never looked at. Each rank writes a line per
# variant to a file of its own (the ranks' stdout interleave).
_ONE_CHANGED_ROW = """
import sys, numpy as np, scipy.sparse, fastbp
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
report = open(f"{sys.argv[1]}/{rank}", "w")
rng = np.random.default_rng(0)
X, y, w = rng.integers(0, 4, (600, 5)), rng.integers(0, 2, 600), np.ones(600, int)
for variant in ("dense X", "sparse X", "y", "sample_weight"):
    X_, y_, w_ = X.copy(), y.copy(), w.copy()
    if rank == 1:   # (a label stays a class: one rank's bad label would end the job)
        {"dense X": X_, "sparse X": X_, "y": y_, "sample_weight": w_}[variant][1] ^= 1
    if variant == "sparse X":
        X_ = scipy.sparse.csr_matrix(X_)
    model = fastbp.MLP([5, 4, 2], dtype=np.float64, seed=0)
    try:
        fastbp.fit(model, X_, y_, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=50,
                   seed=0, sample_weight=w_, comm=MPI.COMM_WORLD)
        print(f"{variant}|trained", file=report, flush=True)
    except fastbp.distributed.RankMismatchError as exc:
        print(f"{variant}|refused: {exc}", file=report, flush=True)
"""


@needs_mpi
def test_ranks_whose_data_differ_in_one_row_are_refused(tmp_path):
    """Every row of X, y and the sample weights counts in the ranks' data check (the README:
    different data on the ranks are refused), not a sample of the rows."""
    status, out, err = run_or_kill([MPIEXEC, "-n", "2", sys.executable, "-c",
                                    _ONE_CHANGED_ROW, str(tmp_path)])
    assert status == 0, err[-3000:]
    for rank in range(2):
        outcomes = dict(line.split("|", 1)
                        for line in (tmp_path / str(rank)).read_text().splitlines())
        assert sorted(outcomes) == ["dense X", "sample_weight", "sparse X", "y"], outcomes
        for variant, outcome in outcomes.items():
            field = "sample_weight" if variant == "sample_weight" else "X and y"
            assert outcome.startswith("refused") and field in outcome, (rank, variant, outcome)


@needs_mpi
def test_ctrl_c_under_mpiexec_saves_once(tmp_path):
    """SIGINT to mpiexec (which passes it to every rank): the ranks stop after the same step,
    rank 0 saves the weights, the job exits 130."""
    path = tmp_path / "m.npz"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "fastbp", "train",
                             "--epochs", "100000", "--save", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=tmp_path)
    try:
        for line in proc.stdout:
            if line.startswith("epoch "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert out.count("model saved") == 1 and out.count("interrupted: ") == 1
    assert fastbp.io.read_metadata(path)["interrupted"] is True
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


@needs_mpi
def test_cold_start_of_two_ranks_with_an_empty_cache(tmp_path):
    """Both ranks compile at once into one empty Numba cache; both runs, and a second one
    from that cache, work."""
    env = dict(_env(), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):
        done = mpiexec(2, [sys.executable, "-m", "fastbp", "train", "--epochs", "2", "--json",
                           "--quiet"], env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert _cli_json(done)["test_accuracy"] > 0.9


# -- in one process ---------------------------------------------------------------------------


def _small():
    X, y, _ = mpi_cases.data()
    model = fastbp.MLP([mpi_cases.N_FEATURES, 8, mpi_cases.N_CLASSES], dtype=np.float64, seed=0)
    return model, X, y, fastbp.SGD(model, lr=0.1)


def test_comm_must_be_a_communicator():
    model, X, y, opt = _small()
    before = model.params.copy()
    with pytest.raises(TypeError, match="comm: expected an MPI communicator"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=8, comm="COMM_WORLD")
    np.testing.assert_array_equal(model.params, before)


def test_shard_needs_comm():
    model, X, y, opt = _small()
    with pytest.raises(ValueError, match="shard: needs comm"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=8, shard=True)


@needs_mpi
def test_one_rank_is_one_process():
    """COMM_SELF: the data-parallel step (penalty added after the sum) on one rank."""
    from mpi4py import MPI
    results = []
    for comm in (None, MPI.COMM_SELF):
        X, y, weights = mpi_cases.data()
        model = fastbp.MLP([mpi_cases.N_FEATURES, 8, mpi_cases.N_CLASSES], dtype=np.float64,
                           seed=0, l2=0.1)
        history = fastbp.fit(model, X, y, fastbp.Adam(model, lr=0.01), epochs=2, batch_size=16,
                             seed=4, sample_weight=weights, comm=comm)
        results.append((model.params.copy(), history["loss"]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12)


def test_the_command_without_mpi4py_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py fails
    assert cli.main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "mpi4py is not installed" in err and "fastbp[mpi]" in err


def test_launched_ranks_reads_the_launchers_environment(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_ranks() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched_ranks() == 4


@needs_mpi
def test_a_rank_without_mpi4py_ends_the_job_with_a_message_not_a_hang():
    """MPI's start waits for every rank: one started without mpi4py says so, and the others,
    past FASTBP_MPI_START_TIMEOUT, say why they stop and end the job (it hung for ever)."""
    without_mpi4py = ("import sys; sys.modules['mpi4py'] = None; from fastbp import cli; "
                      "sys.exit(cli.main(['train', '--epochs', '1']))")
    done = subprocess.run(
        [MPIEXEC, "-n", "1", sys.executable, "-m", "fastbp", "train", "--epochs", "1", ":",
         "-n", "1", sys.executable, "-c", without_mpi4py], capture_output=True, text=True,
        timeout=LAUNCH_TIMEOUT, env=dict(_env(), FASTBP_MPI_START_TIMEOUT="5"))
    assert done.returncode != 0
    err = done.stdout + done.stderr
    assert "rank 1: started by mpiexec as one of 2 processes, but mpi4py is not installed" \
        in err, err[-2000:]
    assert "rank 0: the job's 2 ranks did not all start MPI within 5 s" in err, err[-2000:]


@needs_mpi
@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_a_bad_start_timeout_is_refused_before_mpi_starts(value):
    done = mpiexec(2, [sys.executable, "-m", "fastbp", "train", "--epochs", "1"],
                   env=dict(_env(), FASTBP_MPI_START_TIMEOUT=value))
    assert done.returncode != 0
    assert "FASTBP_MPI_START_TIMEOUT: expected a number of seconds > 0" in done.stderr, \
        done.stderr[-2000:]


def test_ready_steps_readies_the_weighted_step(monkeypatch):
    """The data-parallel warm-up (one rank per node compiles, the others load the cache)
    readies the weighted step when the run has sample weights (--class-weight balanced), not
    only the unweighted one: else every rank compiled it in the first epoch."""
    model = fastbp.MLP([6, 5, 3], seed=0)
    opt = fastbp.SGD(model, lr=0.1)
    X, y = model.engine.check_batch(np.zeros((1, 6)), np.zeros(1, dtype=np.int64))
    readied = []

    def ready(entry, args, update_kind=None, weighted=False, sparse_index=None):
        readied.append((entry.py_func.__name__, weighted))

    monkeypatch.setattr(model.engine, "ready", ready)
    for accumulate, entries in ((1, {"loss_and_grad"}),
                                (2, {"loss_and_grad", "accumulated_loss_and_grad"})):
        readied.clear()
        model.engine.ready_steps(opt.update_spec(), X, y, 4, accumulate, weighted=True)
        weighted = {name for name, w in readied if w}
        assert weighted >= entries, readied


@needs_mpi
def test_a_jobs_results_do_not_depend_on_its_ranks_threads(tmp_path):
    """With the default work split, 2 ranks of 1 thread and 2 ranks of 2 (oversubscribed: for
    bits, not speed) train the same parameters; products this wide are cut into many tiles."""
    args = ["train", "--epochs", "1", "--quiet", "--layers", "512,512", "--batch-size", "256"]
    params = []
    for threads in ("1", "2"):
        done = mpiexec(2, [sys.executable, "-m", "fastbp", *args, "--threads", threads,
                           "--save", str(tmp_path / f"{threads}.npz")], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        params.append(fastbp.load(tmp_path / f"{threads}.npz").params)
    assert np.array_equal(params[0], params[1])

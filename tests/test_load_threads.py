"""fit on a busy machine (issue 33): where nobody chose a thread count, fit runs on the cores
that other processes leave free (fastbp._threads.LoadProbe reads /proc/stat), read again after
each epoch. The count must never change a result, must be restored after fit, and must stay as
chosen whenever someone chose it. (The time it saves is a benchmark, python -m
fastbp.bench_load, not a test.)"""
import numba
import numpy as np
import pytest

import fastbp
from fastbp import _threads
from fastbp._threads import LoadProbe, fit_threads


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _stat(path, cpu0, cpu1, cpu2=0):
    """A /proc/stat whose cpu0, cpu1 and cpu2 have been busy (user) cpu0, cpu1, cpu2 ticks."""
    lines = [f"cpu  {cpu0 + cpu1 + cpu2} 0 0 999 0 0 0 0 0 0"]
    lines += [f"cpu{i} {busy} 0 0 333 0 0 0 0 0 0" for i, busy in enumerate((cpu0, cpu1, cpu2))]
    path.write_text("\n".join(lines + ["intr 1 2 3", "ctxt 42"]) + "\n")


def test_the_probe_counts_other_processes_work_on_our_cpus(tmp_path):
    stat, wall, own = tmp_path / "stat", Clock(), Clock()
    _stat(stat, 0, 0)
    probe = LoadProbe(str(stat), clock=wall, own_cpu=own)
    probe.cpus, probe.tick = {"cpu0", "cpu1"}, 100   # cpu2 is not ours: its work is ignored
    probe.restart()
    # 1 s: cpu0 busy all along (100 ticks), cpu1 half (50); this process used 0.5 s of CPU
    wall.now, own.now = 1.0, 0.5
    _stat(stat, 100, 50, 100)
    assert probe.others() == pytest.approx(1.0)
    wall.now = 1.01                     # under MIN_WINDOW later: the last estimate
    _stat(stat, 101, 51, 100)
    assert probe.others() == pytest.approx(1.0)
    wall.now, own.now = 2.0, 2.5        # then a second of ours alone on both cpus
    _stat(stat, 200, 150, 100)
    assert probe.others() == pytest.approx(0.0)
    wall.now = 2.0 + LoadProbe.MAX_WINDOW + 1   # an idle spell: stale, a new window starts
    _stat(stat, 900, 900, 100)
    assert probe.others() is None and probe.last[0] == wall.now


def _stat_fields(path, user, nice, steal):
    path.write_text(f"cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 {user} {nice} 0 0 0 0 0 {steal} 0 0\n"
                    "intr 1\n")


@pytest.mark.parametrize("niced, expected", [(False, 0.25), (True, 0.75)])
def test_niced_time_counts_only_for_a_niced_process_and_steal_never(tmp_path, niced,
                                                                     expected):
    """A niced process soaks up idle cores but yields them to a process of normal priority:
    its time is no competition then. Steal time hits every virtual CPU alike."""
    stat, wall = tmp_path / "stat", Clock()
    _stat_fields(stat, 0, 0, 0)
    probe = LoadProbe(str(stat), clock=wall, own_cpu=lambda: 0.0)
    probe.cpus, probe.tick = {"cpu0"}, 100
    probe.busy_fields = (0, 1, 2, 5, 6) if niced else (0, 2, 5, 6)
    probe.restart()
    wall.now = 1.0
    _stat_fields(stat, 25, 50, 20)
    assert probe.others() == pytest.approx(expected)


def test_the_real_proc_stat_gives_a_sane_reading():
    probe = LoadProbe()
    if probe.last is None:
        pytest.skip("no /proc/stat here")
    import time
    time.sleep(LoadProbe.MIN_WINDOW + 0.02)
    others = probe.others()
    assert others is not None and 0 <= others <= len(probe.cpus) + 1


def test_a_stat_file_naming_none_of_our_cpus_gives_no_reading(tmp_path):
    """(A container whose /proc/stat renumbers the CPUs.)"""
    stat = tmp_path / "stat"
    _stat(stat, 0, 0)
    probe = LoadProbe(str(stat))
    probe.cpus = {"cpu7"}
    probe.restart()
    assert probe.last is None and probe.others() is None


@pytest.mark.parametrize("text", ["", "\n\ncpu0 1 2\n", "cpu0 x y z 1 2 3 4\n", "garbage\n"])
def test_a_malformed_stat_file_gives_no_reading(tmp_path, text):
    stat = tmp_path / "stat"
    stat.write_text(text)
    probe = LoadProbe(str(stat))
    probe.cpus = {"cpu0"}
    probe.restart()
    assert probe.last is None


def test_a_forked_child_starts_a_window_of_its_own():
    import os
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its window starts at the fork, on its own CPU clock
        ok = _threads._probe.last is None or _threads._probe.last[2] < 0.05
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_no_proc_stat_no_reading(tmp_path):
    probe = LoadProbe(str(tmp_path / "missing"))
    assert probe.last is None and probe.others() is None


class FakeProbe:
    def __init__(self, others, cpus=2):
        self.value, self.cpus = others, {f"cpu{i}" for i in range(cpus)}

    def others(self):
        return self.value


needs_two = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                               reason="needs a pool of at least 2 threads")


@needs_two
@pytest.mark.parametrize("others, count", [(1.0, 1), (0.7, 1), (0.4, 2), (0.0, 2), (5.0, 1),
                                           (None, 2)])
def test_fit_threads_takes_the_free_cores(others, count):
    numba.set_num_threads(2)
    assert fit_threads(2, FakeProbe(others)) == count == numba.get_num_threads()


@needs_two
def test_fit_threads_never_goes_above_the_count_fit_started_with():
    numba.set_num_threads(1)
    assert fit_threads(1, FakeProbe(0.0, cpus=16)) == 1


@pytest.fixture
def unchosen(monkeypatch):
    """This process as if nobody had chosen a thread count (tests before may have), on a
    machine whose probe says what the test sets."""
    monkeypatch.setattr(_threads, "_chosen", False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    fastbp.set_work_split("shape")
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    probe = FakeProbe(0.0, cpus=numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setattr(_threads, "_probe", probe)
    yield probe
    numba.set_num_threads(before)


class SeenThreads:
    def __init__(self):
        self.counts = []

    def on_epoch_end(self, epoch, history, model):
        self.counts.append(numba.get_num_threads())


def _fit(probe=None, **options):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(700, 20)).astype(np.float32)
    y = rng.integers(0, 3, size=700)
    model = fastbp.MLP([20, 64, 64, 3], dtype=np.float32, seed=0, norm="layer")
    opt = fastbp.Adam(model, lr=1e-3, clip_norm=1.0)
    seen = SeenThreads()
    history = fastbp.fit(model, X, y, opt, epochs=3, batch_size=8, seed=0,
                         validation_fraction=0.1,
                         callbacks=[seen, *options.pop("callbacks", [])], **options)
    return (model.params.copy(), [history[k] for k in ("loss", "grad_norm", "val_loss")], seen,
            history)


@needs_two
def test_a_busy_machine_gets_fewer_threads_and_the_same_bits(unchosen):
    most = numba.get_num_threads()
    quiet = _fit()
    assert quiet[2].counts == [most] * 3
    unchosen.value = most - 0.9           # all cores but one busy elsewhere
    busy = _fit()
    assert busy[2].counts == [1] * 3 and numba.get_num_threads() == most   # restored
    assert busy[3].threads == [1] * 3 and quiet[3].threads == [most] * 3
    assert np.array_equal(quiet[0], busy[0]) and quiet[1] == busy[1]


@needs_two
def test_the_count_follows_the_load_epoch_by_epoch(unchosen):
    values = iter([0.0, 1.0, 0.0])        # read before each epoch

    class Changing(FakeProbe):
        def others(self):
            return next(values, None)
    _threads._probe = Changing(0.0, cpus=2)
    numba.set_num_threads(2)
    assert _fit()[2].counts == [2, 1, 2]


@needs_two
@pytest.mark.parametrize("chosen_by", ["set_num_threads", "NUMBA_NUM_THREADS", "work split"])
def test_a_chosen_count_is_kept(unchosen, monkeypatch, chosen_by):
    unchosen.value = 5.0                  # the machine looks busy
    most = numba.get_num_threads()
    if chosen_by == "set_num_threads":
        fastbp.set_num_threads(most)
    elif chosen_by == "NUMBA_NUM_THREADS":
        monkeypatch.setenv("NUMBA_NUM_THREADS", str(most))
    elif chosen_by == "work split":
        fastbp.set_work_split("threads")  # (the unchosen fixture puts "shape" back)
    try:
        assert not _threads.load_free()
        assert _fit()[2].counts == [most] * 3
    finally:
        fastbp.set_work_split("shape")


@needs_two
def test_the_count_is_put_back_when_fit_raises(unchosen):
    unchosen.value = 5.0
    most = numba.get_num_threads()

    class Boom:
        def on_epoch_end(self, *args):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        _fit(callbacks=[Boom()])
    assert numba.get_num_threads() == most


@needs_two
def test_a_count_chosen_during_fit_stays_chosen(unchosen):
    """A callback's set_num_threads wins over the load from the next epoch on, and stays."""
    unchosen.value = 5.0

    class Choose:
        def on_epoch_end(self, epoch, history, model):
            if epoch == 0:
                fastbp.set_num_threads(2)
    params, _, seen, history = _fit(callbacks=[Choose()])
    assert history.threads == [1, 2, 2] and numba.get_num_threads() == 2


@needs_two
def test_fastbp_train_reports_each_epoch_s_count(unchosen, capsys):
    import json
    from fastbp.cli import main
    unchosen.value = 5.0
    assert main(["train", "--epochs", "2", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch_threads"] == [1, 1]

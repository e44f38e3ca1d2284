"""The benchmark tools around the asv suite (issue 30): the regression gate (benchmarks/gate.py)
and its check (gate_check.py), and the offline report (offline_html.py). Their mechanics only:
whether a gate flags a slowdown on this machine is measured by gate_check.py, not asserted in a
test (no test asserts on time)."""
import base64
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GATE = ROOT / "benchmarks" / "gate.py"


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gate
    import gate_check
    import offline_html
    return gate, gate_check, offline_html


def _gate(*args, **env):
    return subprocess.run([sys.executable, str(GATE), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


# -- the verdict ----------------------------------------------------------------------------------

@pytest.mark.parametrize("head, regressed", [
    ([1.15] * 8, True),                       # slower in every round
    ([1.15] * 6 + [0.95] * 2, True),          # in 3/4 of them
    ([1.15] * 5 + [0.95] * 3, False),         # median slower, but not consistently
    ([1.05] * 8, False),                      # consistently, but within the threshold
    ([0.80] * 8, False),                      # faster
])
def test_a_regression_is_a_median_beyond_the_threshold_in_most_rounds(tools, head, regressed):
    gate = tools[0]
    median, slower, bad = gate.verdict([1.0] * 8, head, threshold=0.08)
    assert bad is regressed
    assert slower == sum(h > 1 for h in head)


# -- the command ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ((), "BASE is required"),
    (("HEAD", "--rounds", "2"), "--rounds must be at least 3"),
    (("HEAD", "--repeat", "0"), "--repeat must be at least 1"),
    (("HEAD", "--threshold", "0"), "--threshold must be a fraction"),
    (("HEAD", "--threads", "-1"), "--threads must be 0"),
    (("HEAD", "--workload", "nope"), "invalid choice"),
])
def test_bad_arguments_are_refused(args, message):
    result = _gate(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_unknown_revision_or_folder_stops_the_gate_with_status_2(tmp_path):
    result = _gate("no-such-revision-xyz", XDG_CACHE_HOME=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert ("no-such-revision-xyz: neither a folder holding fastbp/ nor a git revision"
            in result.stderr)
    assert "Traceback" not in result.stderr
    result = _gate(str(tmp_path))
    assert result.returncode == 2 and "not a fastbp source tree" in result.stderr


def test_an_unwritable_json_path_is_refused_before_any_timing(tmp_path):
    result = _gate(str(ROOT), "--json", str(tmp_path / "no such folder" / "gate.json"))
    assert result.returncode == 2 and "--json" in result.stderr and "cannot write" in result.stderr
    assert "warming up" not in result.stdout


def test_a_revision_is_exported_once_into_the_cache(tools, tmp_path, monkeypatch):
    gate = tools[0]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    monkeypatch.setattr(gate, "CACHE", str(tmp_path))
    label, folder = gate.source_tree("HEAD")
    tracked = subprocess.run(["git", "show", "HEAD:fastbp/__init__.py"], cwd=ROOT,
                             capture_output=True).stdout
    assert (pathlib.Path(folder) / "fastbp" / "__init__.py").read_bytes() == tracked
    assert label.startswith("HEAD (") and pathlib.Path(folder).parent == tmp_path
    assert not (pathlib.Path(folder) / "tests").exists()   # fastbp/ only
    assert sorted(p.name for p in tmp_path.iterdir()) == [pathlib.Path(folder).name]  # no scratch
    git = gate._git

    def no_second_archive(*args):
        assert args[0] != "archive", "exported again"
        return git(*args)
    monkeypatch.setattr(gate, "_git", no_second_archive)
    assert gate.source_tree("HEAD") == (label, folder)


def _fake_times(head_factor, rounds=8):
    return {"step 64-128-10 b32": {"base": [1e-3] * rounds, "head": [head_factor * 1e-3] * rounds},
            "fit 64-128-128-10 b32": {"base": [2e-3] * rounds, "head": [2e-3] * rounds}}


@pytest.mark.parametrize("head_factor, status", [(1.2, 1), (1.0, 0)])
def test_the_exit_status_and_json_name_what_regressed(tools, tmp_path, monkeypatch, capsys,
                                                      head_factor, status):
    gate = tools[0]
    monkeypatch.setattr(gate, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gate, "compare", lambda *args, **kwargs: _fake_times(head_factor))
    out = tmp_path / "gate.json"
    assert gate.main([str(ROOT), str(ROOT), "--json", str(out)]) == status
    regressed = json.loads(out.read_text())["regressed"]
    assert regressed == (["step 64-128-10 b32"] if status else [])
    assert ("PERFORMANCE REGRESSED beyond 8.0%" in capsys.readouterr().out) == bool(status)


def test_a_crash_is_status_2_not_a_regression(tools, tmp_path, monkeypatch, capsys):
    gate = tools[0]
    monkeypatch.setattr(gate, "CACHE", str(tmp_path))

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(gate, "compare", crash)
    assert gate.main([str(ROOT), str(ROOT)]) == 2
    assert "could not run: RuntimeError: disk on fire" in capsys.readouterr().err


def test_a_workload_one_side_cannot_run_is_left_out(tools, monkeypatch):
    """An older BASE without an API a workload uses: the others are still compared."""
    gate = tools[0]

    def run_worker(tree, names, repeat, threads):
        failed = {"fit 64-128-128-10 b32": "TypeError: no metrics_rows"} if tree == "old" else {}
        return {"seconds": {n: 1e-3 for n in names if n not in failed}, "failed": failed}
    monkeypatch.setattr(gate, "run_worker", run_worker)
    notes = []
    times = gate.compare("old", "new", ["step 64-128-10 b32", "fit 64-128-128-10 b32"], 3, 1, 0,
                         log=notes.append)
    assert list(times) == ["step 64-128-10 b32"]
    assert any("left out 'fit 64-128-128-10 b32'" in note and "metrics_rows" in note
               for note in notes)


def test_the_gate_runs_end_to_end_and_writes_its_times(tmp_path):
    """Both sides this checkout (no export, no compile): the table, the JSON and a verdict
    (0 or 1: which one depends on the machine's noise, so it is not asserted)."""
    out = tmp_path / "gate.json"
    result = _gate(str(ROOT), str(ROOT), "--rounds", "3", "--repeat", "1", "--threads", "1",
                   "--workload", "step 64-128-10 b32", "--workload", "predict 784-256-128-10 b512",
                   "--json", str(out), XDG_CACHE_HOME=str(tmp_path))
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(out.read_text())
    assert set(data["times"]) == {"step 64-128-10 b32", "predict 784-256-128-10 b512"}
    for times in data["times"].values():
        assert len(times["base"]) == len(times["head"]) == 3
        assert all(t > 0 for t in times["base"] + times["head"])
    assert "step 64-128-10 b32" in result.stdout and "round 3/3 done" in result.stdout


# -- gate_check -----------------------------------------------------------------------------------

def test_the_injected_slowdown_pads_each_call(tools, monkeypatch):
    """SLOWDOWN's wrapper, run against a stand-in Optimizer and a stand-in clock that ticks once
    per reading: the call's result and arguments pass through, and it returns only once
    (1 + slowdown) times the call's own time has passed."""
    import time
    gate_check = tools[1]
    clock = [0.0]

    def perf_counter():
        clock[0] += 1
        return clock[0]
    monkeypatch.setattr(time, "perf_counter", perf_counter)

    class Optimizer:
        def train_step(self, X, y, sample_weight=None):
            clock[0] += 99          # the step's own work: 100 ticks from the first reading
            return (X, y, sample_weight)
    namespace = {"Optimizer": Optimizer}
    exec(gate_check.SLOWDOWN.format(slowdown=0.15), namespace)
    assert Optimizer().train_step(1, 2, sample_weight=3) == (1, 2, 3)
    assert clock[0] >= 1 + 1.15 * 100     # padded to 115 ticks after the start
    assert Optimizer.train_step.__name__ == "train_step"


def test_copies_are_made_once_per_content(tools, tmp_path):
    gate_check = tools[1]
    source = tmp_path / "src"
    (source / "fastbp").mkdir(parents=True)
    (source / "fastbp" / "optim.py").write_text("class Optimizer:\n    pass\n")
    (source / "fastbp" / "__pycache__").mkdir()
    same = pathlib.Path(gate_check.copy_tree(str(source), str(tmp_path / "cache")))
    slow = pathlib.Path(gate_check.copy_tree(str(source), str(tmp_path / "cache"), 0.15))
    assert (same / "fastbp" / "optim.py").read_text() == "class Optimizer:\n    pass\n"
    assert not (same / "fastbp" / "__pycache__").exists()
    slowed = (slow / "fastbp" / "optim.py").read_text()
    assert slowed.endswith("Optimizer.train_step = _padded(Optimizer.train_step)\n")
    compile(slowed, "optim.py", "exec")
    assert gate_check.copy_tree(str(source), str(tmp_path / "cache")) == str(same)
    (source / "fastbp" / "optim.py").write_text("class Optimizer:\n    x = 1\n")
    assert gate_check.copy_tree(str(source), str(tmp_path / "cache")) != str(same)


def test_the_project_s_optimizer_can_be_slowed(tools):
    """The patch names Optimizer.train_step: it must exist in fastbp/optim.py."""
    import fastbp.optim
    assert "train_step" in vars(fastbp.optim.Optimizer)


@pytest.mark.parametrize("false_alarms, detections, ok", [(0, 5, True), (0, 4, True),
                                                          (0, 3, False), (1, 5, False)])
def test_the_check_passes_on_no_false_alarm_and_4_in_5_caught(tools, false_alarms, detections,
                                                               ok):
    assert tools[1].passed(false_alarms, detections, 5) is ok


# -- the offline report ---------------------------------------------------------------------------

def _sri(data, algorithm="sha384"):
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def _page(tmp_path, script, style):
    html = tmp_path / "html"
    html.mkdir()
    page = ('<html><head>\n'
            f'<script src="https://cdn.example/lib/1.0/lib.min.js" integrity="{_sri(script)}" '
            'crossorigin="anonymous" onerror="js_load_failure()"></script>\n'
            '<script src="asv.js"></script>\n'
            f'<link rel="stylesheet" href="https://cdn.example/css/site.css" '
            f'integrity="{_sri(style, "sha256")}" crossorigin="anonymous">\n'
            '</head><body><a href="https://example.org/">home</a></body></html>\n')
    (html / "index.html").write_text(page)
    files = tmp_path / "files"
    files.mkdir()
    (files / "lib.min.js").write_bytes(script)
    (files / "site.css").write_bytes(style)
    return html, files, page


def test_the_report_is_pointed_at_checked_local_copies(tools, tmp_path):
    offline_html = tools[2]
    html, files, _ = _page(tmp_path, b"var lib = 1;\n", b"body { margin: 0 }\n")
    assert offline_html.main([str(html), "--from", str(files)]) == 0
    page = (html / "index.html").read_text()
    assert "https://cdn.example" not in page and "integrity" not in page
    assert '<a href="https://example.org/">' in page and '<script src="asv.js">' in page
    stored = sorted(p.name for p in (html / "vendor").iterdir())
    assert sorted(name.split("-", 1)[1] for name in stored) == ["lib.min.js", "site.css"]
    for name in stored:
        assert f'"vendor/{name}"' in page
        assert (html / "vendor" / name).read_bytes() == (files / name.split("-", 1)[1]).read_bytes()
    assert offline_html.main([str(html), "--from", str(files)]) == 0   # again: nothing to do


def test_a_file_that_fails_its_hash_is_refused_and_the_page_kept(tools, tmp_path, capsys):
    offline_html = tools[2]
    html, files, page = _page(tmp_path, b"var lib = 1;\n", b"body { margin: 0 }\n")
    (files / "site.css").write_bytes(b"body { margin: 1 }\n")
    assert offline_html.main([str(html), "--from", str(files)]) == 1
    assert "site.css: its sha256 hash is" in capsys.readouterr().err
    assert (html / "index.html").read_text() == page


def test_no_report_no_vendoring(tools, tmp_path, capsys):
    assert tools[2].main([str(tmp_path)]) == 2
    assert "run `asv publish` first" in capsys.readouterr().err

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
    assert result.returncode == 2 and "no-such-revision-xyz" in result.stderr
    assert "Traceback" not in result.stderr
    result = _gate(str(tmp_path))
    assert result.returncode == 2 and "not a fastbp source tree" in result.stderr


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
    assert gate.source_tree("HEAD") == (label, folder)      # found, not exported again


def test_the_gate_runs_end_to_end_and_writes_its_times(tmp_path):
    """Both sides this checkout (no export, no compile): the table, the JSON and a verdict
    (0 or 1: which one depends on the machine's noise, so it is not asserted)."""
    out = tmp_path / "gate.json"
    result = _gate(str(ROOT), str(ROOT), "--rounds", "3", "--repeat", "1", "--threads", "1",
                   "--workload", "step 64-128-10 b32", "--workload", "predict 784-256-128-10 b512",
                   "--json", str(out))
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(out.read_text())
    assert set(data["times"]) == {"step 64-128-10 b32", "predict 784-256-128-10 b512"}
    for times in data["times"].values():
        assert len(times["base"]) == len(times["head"]) == 3
        assert all(t > 0 for t in times["base"] + times["head"])
    assert "step 64-128-10 b32" in result.stdout and "round 3/3 done" in result.stdout


def test_the_slowdown_is_injected_into_the_training_step(tools, tmp_path):
    """gate_check's patch still finds Optimizer.train_step's first lines, and the patched
    module is valid Python whose train_step pads the original one."""
    gate_check = tools[1]
    slowed = gate_check.copy_tree(str(ROOT), str(tmp_path / "slow"), 0.15)
    text = (pathlib.Path(slowed) / "fastbp" / "optim.py").read_text()
    compile(text, "optim.py", "exec")
    assert text.count("def _unpadded_train_step(self, X, y, sample_weight=None):") == 1
    assert "(1 + 0.15) *" in text
    same = gate_check.copy_tree(str(ROOT), str(tmp_path / "same"))
    assert (pathlib.Path(same) / "fastbp" / "optim.py").read_text() == (
        ROOT / "fastbp" / "optim.py").read_text()
    assert not list(pathlib.Path(same).rglob("__pycache__"))


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

"""Python threads: one model is refused to a second thread while another uses it (its compiled
calls release the GIL and share the model's buffers); two models in two threads train as
they would one after the other.

The fits that may overlap run in a fresh interpreter with a timeout: before models refused a
second thread, overlapping compiled calls could corrupt the model or the process.
"""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp.engine import IN_USE_MESSAGE
from thread_cases import BATCH, EPOCHS, X, new_model, train, y

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300   # a bound on a hang, not a timing: the script takes seconds

# The scripts start with thread_cases' definitions (the data, a model, one thread's fit).
SETUP = "from thread_cases import *\n"


def _run_script(body):
    """Run SETUP then body in a fresh interpreter; body prints one JSON line, returned parsed
    (with the interpreter's stderr)."""
    path = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    done = subprocess.run([sys.executable, "-c", SETUP + body], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


TWO_THREADS_ONE_MODEL = """
import json, threading

model, opt = new_model()
barrier, outcomes = threading.Barrier(2), []

def one_fit():
    barrier.wait()
    try:
        train(model, opt)
        outcomes.append("done")
    except Exception as error:
        outcomes.append(f"{type(error).__name__}: {error}")

threads = [threading.Thread(target=one_fit) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
alone, alone_opt = new_model()
train(alone, alone_opt)
print(json.dumps({"outcomes": sorted(outcomes), "steps": opt.steps,
                  "alone_steps": alone_opt.steps,
                  "same_params": bool(np.array_equal(model.params, alone.params))}))
"""


def test_two_threads_training_one_model_one_is_refused_and_the_model_is_whole():
    result, stderr = _run_script(TWO_THREADS_ONE_MODEL)
    assert result["outcomes"] == ["RuntimeError: " + IN_USE_MESSAGE, "done"]
    # The refused fit changed nothing: the model is the one fit's, step for step and bitwise.
    assert result["steps"] == result["alone_steps"] == EPOCHS * len(X) // BATCH
    assert result["same_params"]
    assert "Exception ignored" not in stderr


TWO_THREADS_TWO_MODELS = """
import json, threading

models = [new_model(seed) for seed in (0, 1)]
barrier, failures = threading.Barrier(2), []

def one_fit(model, opt):
    barrier.wait()
    try:
        train(model, opt)
    except Exception as error:
        failures.append(repr(error))

threads = [threading.Thread(target=one_fit, args=pair) for pair in models]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
same = []
for seed, (model, opt) in zip((0, 1), models):
    alone, alone_opt = new_model(seed)
    train(alone, alone_opt)
    same.append(bool(np.array_equal(model.params, alone.params))
                and opt.steps == alone_opt.steps)
print(json.dumps({"failures": failures, "same": same}))
"""


def test_two_models_in_two_threads_train_as_alone():
    result, stderr = _run_script(TWO_THREADS_TWO_MODELS)
    assert result == {"failures": [], "same": [True, True]}
    assert "Exception ignored" not in stderr


def _in_another_thread(action):
    """action() run on a new thread (and waited for): what it raised, or None."""
    raised = []

    def target():
        try:
            action()
        except Exception as error:
            raised.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    return raised[0] if raised else None


class _UsesTheModelMidFit:
    """After the first epoch, on fit's own thread: predict (allowed), then from another
    thread: predict, loss_and_grad and a second fit (each refused)."""

    def __init__(self, model, opt):
        self.model, self.opt, self.refusals = model, opt, []

    def on_epoch_end(self, epoch, history, model):
        if epoch != 0:
            return
        assert model.predict(X[:5]).shape == (5,)   # the same thread may re-enter
        for action in (lambda: model.predict(X[:5]), lambda: model.loss_and_grad(X[:5], y[:5]),
                       lambda: train(self.model, self.opt)):
            self.refusals.append(_in_another_thread(action))


def test_another_thread_is_refused_while_fit_runs_and_fits_callbacks_may_use_the_model():
    model, opt = new_model()
    user = _UsesTheModelMidFit(model, opt)
    history = train(model, opt, callbacks=[user])
    assert [type(error) for error in user.refusals] == [RuntimeError] * 3
    assert all(str(error) == IN_USE_MESSAGE for error in user.refusals)
    alone, alone_opt = new_model()
    train(alone, alone_opt)
    assert history.n_epochs == EPOCHS and opt.steps == alone_opt.steps
    np.testing.assert_array_equal(model.params, alone.params)
    # Released after fit: another thread may use the model now.
    assert _in_another_thread(lambda: model.predict(X[:5])) is None


@pytest.mark.parametrize("failing", [False, True])
def test_the_hold_is_released_after_fit_even_when_fit_raises(failing):
    model, opt = new_model()
    if failing:
        with pytest.raises(ValueError):
            fastbp.fit(model, X, y, opt, epochs=0, batch_size=BATCH)
    else:
        fastbp.fit(model, X[:100], y[:100], opt, epochs=1, batch_size=BATCH)
    assert _in_another_thread(lambda: model.predict(X[:5])) is None

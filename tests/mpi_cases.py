"""Data-parallel fits for tests/test_mpi.py, run by it under ``mpiexec -n N``.

``python tests/mpi_cases.py OUT`` (under mpiexec) runs every case of CASES on each rank and
writes OUT/<case>-<rank>.npz: the parameters and the history's losses, or the refusal's
exception. test_mpi.py runs the same cases in one process (``train(case, None)``) and compares.
``python tests/mpi_cases.py OUT --fail KIND`` instead fails one rank mid-training (see fail()).
"""
import os
import signal
import sys

import numpy as np

import fastbp

N_ROWS, N_FEATURES, N_CLASSES = 203, 7, 3


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, N_FEATURES))
    y = rng.integers(0, N_CLASSES, N_ROWS)
    weights = rng.uniform(0, 2, N_ROWS)
    weights[rng.random(N_ROWS) < 0.2] = 0.0   # some rows weigh nothing
    return X, y, weights


def _sgd(model):
    return fastbp.SGD(model, lr=0.1)


def _momentum_clipped(model):
    return fastbp.SGD(model, lr=0.1, momentum=0.9, nesterov=True, clip_norm=0.5)


def _adam_clipped(model):
    return fastbp.Adam(model, lr=0.01, clip_norm=0.3)


def _adamw(model):
    return fastbp.AdamW(model, lr=0.01, weight_decay=0.1)


# name: (optimizer, model options, fit options, shard, sample weights)
CASES = {
    "sgd": (_sgd, {}, dict(batch_size=32, epochs=3), False, False),
    "momentum_clipped_l2": (_momentum_clipped, dict(l2=0.01), dict(batch_size=32, epochs=3),
                            False, False),
    "adam_clipped": (_adam_clipped, {}, dict(batch_size=25, epochs=3), False, False),
    "adamw_accumulate": (_adamw, {}, dict(batch_size=16, epochs=2, accumulate=3), False, False),
    "batch_smaller_than_ranks": (_sgd, {}, dict(batch_size=2, epochs=1), False, False),
    "weights_l2": (_adam_clipped, dict(l2=0.05), dict(batch_size=20, epochs=2), False, True),
    "mse_tanh": (_momentum_clipped, dict(loss="mse", activation="tanh"),
                 dict(batch_size=30, epochs=3), False, False),
    "early_stopping": (_momentum_clipped, {}, dict(batch_size=16, epochs=12, early_stopping=2,
                                                   validation_fraction=0.25), False, False),
    "shard": (_momentum_clipped, dict(l2=0.01), dict(batch_size=32, epochs=3), True, False),
    "shard_adam_weights": (_adam_clipped, {}, dict(batch_size=24, epochs=2), True, True),
    "shard_tiny_batches": (_sgd, {}, dict(batch_size=2, epochs=1), True, False),
    # accuracy of multilabel targets whose first rows are one-hot (a part may be all one-hot),
    # on a sample of the rows
    "shard_multilabel_metrics": (_adam_clipped, dict(loss="binary_cross_entropy"),
                                 dict(batch_size=32, epochs=2, metrics_rows=50), True, False),
    # dropout masks keyed by the global rows: one process's, also with shard (row offsets)
    "layer_norm_dropout": (_adam_clipped, dict(norm="layer", dropout=[0.3, 0.2]),
                           dict(batch_size=32, epochs=2), False, False),
    "shard_layer_norm_dropout": (_momentum_clipped, dict(norm="layer", dropout=0.25),
                                 dict(batch_size=24, epochs=2, accumulate=2), True, False),
    # each rank normalises its own rows: not one process's (BATCH_STATISTICS_APART)
    "batch_norm": (_adam_clipped, dict(norm="batch", dropout=0.1),
                   dict(batch_size=32, epochs=2), False, False),
    # float32 with bfloat16 products (emulated: any CPU): the ranks' sums run in another order
    # than one process's, and the rounding to bfloat16 magnifies that (FLOAT32_CASES)
    "bfloat16": (_momentum_clipped,
                 dict(dtype=np.float32, matmul_precision="bfloat16-emulated"),
                 dict(batch_size=32, epochs=2), False, False),
}
# Cases whose ranks train apart from one process (each normalises by its own rows' statistics):
# only the replicas' agreement is compared.
BATCH_STATISTICS_APART = {"batch_norm"}
# Cases in float32, compared with one process's to float32's tolerance, not float64's.
FLOAT32_CASES = {"bfloat16"}


def shard_bounds(n_ranks):
    """Uneven parts: rank r of n gets a part of its own size (the last takes the rest)."""
    cuts = [min(N_ROWS - 1, 17 + 61 * r) for r in range(n_ranks - 1)]
    return [0] + cuts + [N_ROWS]


def train(case, comm):
    """(model, history) of the case, on one process (comm None) or on this rank."""
    make_optimizer, model_options, fit_options, shard, weighted = CASES[case]
    X, y, weights = data()
    model = fastbp.MLP([N_FEATURES, 16, 8, 2 if model_options.get("loss") == "mse" else 3],
                       seed=3, **dict(dict(dtype=np.float64), **model_options))
    if model.loss == "mse":
        y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)
    elif model.loss == "binary_cross_entropy":
        labels = y
        y = (X[:, :3] > 0).astype(np.float64)
        y[:100] = np.eye(3)[labels[:100]]
    if comm is not None and shard:
        bounds = shard_bounds(comm.Get_size())
        part = slice(bounds[comm.Get_rank()], bounds[comm.Get_rank() + 1])
        X, y, weights = X[part], y[part], weights[part]
    extra = dict(comm=comm, shard=shard) if comm is not None else {}
    history = fastbp.fit(model, X, y, make_optimizer(model), seed=11,
                         sample_weight=weights if weighted else None, **fit_options, **extra)
    return model, history


class _Halved:
    """A user's schedule holding another object (compared by its kind alone)."""

    def __init__(self):
        self.inner = fastbp.schedules.Cosine(3)

    def rate(self, base_lr, epoch, samples):
        return 0.5 * self.inner.rate(base_lr, epoch, samples)


def _threads_chosen_on_rank_one(fit, rank):
    if rank == 1:   # (last of the cases: the choice holds for the rest of the process)
        fastbp.set_num_threads(1)
    return fit(rank)


def _refusals(comm):
    """Settings that differ between ranks, or a bad argument on one rank: every rank must
    raise. name: a function of the rank returning fit's keyword arguments."""
    X, y, _ = data()

    def model(rank, hidden=16):
        return fastbp.MLP([N_FEATURES, hidden, N_CLASSES], dtype=np.float64, seed=3)

    def fit(rank, m=None, **changes):
        m = m or model(rank)
        schedule = changes.pop("lr_schedule", None)
        options = dict(X=X, y=y, optimizer=fastbp.SGD(m, lr=0.1, lr_schedule=schedule),
                       epochs=1, batch_size=32, seed=1, comm=comm)
        options.update(changes)
        return fastbp.fit(m, **options)

    def fit_resumed(rank):   # rank 1's optimizer has ended an epoch, the others' none
        m = model(rank)
        optimizer = fastbp.SGD(m, lr=0.1)
        if rank == 1:
            optimizer.end_epoch(N_ROWS, 1.0)
        return fit(rank, m=m, optimizer=optimizer, initial_epoch=1)

    def fit_scheduled(rank):
        m = model(rank)
        schedule = fastbp.schedules.Step(1, 0.5) if rank == 0 else None
        return fit(rank, m=m, optimizer=fastbp.SGD(m, lr=0.1, lr_schedule=schedule))

    return {
        "other_model": lambda r: fit(r, m=model(r, hidden=16 + r)),
        "seed_on_some_ranks": lambda r: fit(r, seed=None if r == 0 else 1),
        "shard_on_one_rank": lambda r: fit(r, shard=r == 1),
        "shard_not_a_bool_on_one_rank": lambda r: fit(r, shard=1 if r == 1 else False),
        "weights_on_one_rank": lambda r: fit(r, shard=True, X=X[r::3], y=y[r::3],
                                             sample_weight=np.ones(len(y[r::3]))
                                             if r == 0 else None),
        "optimizer_epochs_differ": fit_resumed,
        "schedule_differs": fit_scheduled,
        "bad_initial_step": lambda r: fit(r, initial_step=100),
        "empty_part": lambda r: fit(r, shard=True, X=X[:0] if r == 1 else X,
                                    y=y[:0] if r == 1 else y),
        # not refusals: seed None is drawn on rank 0 before rows are held out; a part whose
        # rows all weigh 0; a user's schedule; a thread count chosen on one rank only
        "validation_fraction_without_seed": lambda r: fit(r, seed=None,
                                                          validation_fraction=0.2),
        "a_part_weighs_0": lambda r: fit(r, shard=True, X=X[r::3], y=y[r::3],
                                         sample_weight=np.full(len(y[r::3]), float(r > 0))),
        "user_schedule": lambda r: fit(r, lr_schedule=_Halved()),
        "threads_chosen_on_one_rank": lambda r: _threads_chosen_on_rank_one(fit, r),
        "other_data": lambda r: fit(r, X=X + r),
        "other_batch_size": lambda r: fit(r, batch_size=32 + r),
        "bad_epochs_on_one_rank": lambda r: fit(r, epochs=0 if r == 1 else 1),
        "no_shard_validation_fraction": lambda r: fit(r, shard=True, validation_fraction=0.2),
    }


def main(out):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    for case in CASES:
        model, history = train(case, comm)
        np.savez(os.path.join(out, f"{case}-{rank}.npz"), params=model.params,
                 running=model.engine.running, passes=model.training_passes,
                 loss=np.array(history["loss"]), stop_reason=history.stop_reason,
                 accuracy=np.array(history.get("accuracy", [])),
                 best_epoch=-1 if history.best_epoch is None else history.best_epoch,
                 val_loss=np.array(history.get("val_loss", [])))
    for case, run in _refusals(comm).items():
        try:
            run(rank)
            error = "none"
        except Exception as exc:   # the test wants every rank to have raised
            error = f"{type(exc).__name__}: {exc}"
        np.savez(os.path.join(out, f"refusal-{case}-{rank}.npz"), error=error)


def fail(kind):
    """Train with a callback that fails on rank 1 alone: raises, or kills its process."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD

    class FailOnRankOne:
        def on_train_begin(self, model, history):
            if comm.Get_rank() == 1 and kind == "begin":
                raise RuntimeError("a callback failed on rank 1")

        def on_epoch_end(self, epoch, history, model):
            if comm.Get_rank() == 1 and epoch == 1:
                if kind == "raise":
                    raise RuntimeError("a callback failed on rank 1")
                os.kill(os.getpid(), signal.SIGKILL)

    X, y, _ = data()
    model = fastbp.MLP([N_FEATURES, 16, N_CLASSES], seed=3)
    fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1000, batch_size=32, seed=1,
               comm=comm, callbacks=[FailOnRankOne()])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--fail":
        fail(sys.argv[3])
    else:
        main(sys.argv[1])

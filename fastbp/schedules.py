"""Learning-rate schedules, stepped once per epoch.

A schedule is given to an optimizer (``fastbp.Adam(model, lr_schedule=Cosine(30))``). The
optimizer's ``lr`` is the schedule's rate for the epoch about to run: set when the optimizer is
built (epoch 0) and after every epoch by ``fit`` (through ``optimizer.end_epoch``). The
optimizer keeps the schedule's position (epochs done, samples seen) and saves it with its state,
so a resumed run continues the schedule where it stopped.

Each schedule computes ``rate(base_lr, epoch, samples)``: the rate of epoch ``epoch`` (counting
from 0) after ``samples`` training samples, from the optimizer's initial ``base_lr``.
``Adaptive`` also watches the loss (``observe``), and so has state of its own.
"""
import math
import numbers

__all__ = ["Constant", "Step", "Cosine", "InvScaling", "Adaptive", "SCHEDULES", "from_config"]


def _number(name, value, low=None, high=None, low_open=False, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    try:
        value = int(value) if integer else float(value)
        math.isfinite(value)
    except OverflowError:
        raise ValueError(f"{name}: {str(value)[:20]}... is out of range") from None
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"{name}: expected a value in {bounds}, got {value!r}")
    return value


class Constant:
    """The same rate every epoch."""
    name = "constant"

    def config(self):
        return {}

    def rate(self, base_lr, epoch, samples):
        return base_lr


class Step:
    """``base_lr * gamma ** (epoch // step_size)``: multiplied by ``gamma`` every ``step_size``
    epochs (torch.optim.lr_scheduler.StepLR stepped per epoch)."""
    name = "step"

    def __init__(self, step_size, gamma=0.1):
        self.step_size = _number("step_size", step_size, 1, integer=True)
        self.gamma = _number("gamma", gamma, 0, 1, low_open=True)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def rate(self, base_lr, epoch, samples):
        return base_lr * self.gamma ** (epoch // self.step_size)


class Cosine:
    """Linear warm-up over the first ``warmup`` epochs (``base_lr * (e + 1) / (warmup + 1)``),
    then a half cosine from ``base_lr`` at epoch ``warmup`` towards ``min_lr`` at epoch
    ``epochs`` (the planned length of the run; later epochs stay at ``min_lr``). A ``min_lr``
    above ``base_lr`` counts as ``base_lr``: the rate never rises past it."""
    name = "cosine"

    def __init__(self, epochs, warmup=0, min_lr=0.0):
        self.epochs = _number("epochs", epochs, 1, integer=True)
        self.warmup = _number("warmup", warmup, 0, integer=True)
        if self.warmup >= self.epochs:
            raise ValueError(f"warmup: {self.warmup} epochs of warm-up leave none of the "
                             f"{self.epochs} for the cosine")
        self.min_lr = _number("min_lr", min_lr, 0)

    def config(self):
        return {"epochs": self.epochs, "warmup": self.warmup, "min_lr": self.min_lr}

    def rate(self, base_lr, epoch, samples):
        if epoch < self.warmup:
            return base_lr * (epoch + 1) / (self.warmup + 1)
        progress = min(1.0, (epoch - self.warmup) / (self.epochs - self.warmup))
        low = min(self.min_lr, base_lr)
        return low + (base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


class InvScaling:
    """scikit-learn's ``invscaling``: ``base_lr / (samples + 1) ** power_t`` after ``samples``
    training samples, updated once per epoch (as scikit-learn's MLP does)."""
    name = "invscaling"

    def __init__(self, power_t=0.5):
        self.power_t = _number("power_t", power_t, 0)

    def config(self):
        return {"power_t": self.power_t}

    def rate(self, base_lr, epoch, samples):
        try:
            return base_lr / (samples + 1) ** self.power_t   # scikit-learn's arithmetic
        except OverflowError:   # the rate is below any float
            return 0.0


class Adaptive:
    """scikit-learn's ``adaptive``: the rate stays while the watched loss improves; an epoch
    whose loss is not below the best one by at least ``tol`` counts as bad, and after more than
    ``patience`` bad epochs in a row the rate is divided by ``factor`` (not below ``min_lr``)
    and the count restarts. ``fit`` watches the validation loss when it has validation rows,
    else the training loss. (scikit-learn's defaults: factor 5, its n_iter_no_change 10, tol
    1e-4; it stops training once the rate would go below 1e-6, where this one stays at min_lr.)
    """
    name = "adaptive"

    def __init__(self, factor=5.0, patience=10, tol=1e-4, min_lr=1e-6):
        self.factor = _number("factor", factor, 1, low_open=True)
        self.patience = _number("patience", patience, 0, integer=True)
        self.tol = _number("tol", tol, 0)
        self.min_lr = _number("min_lr", min_lr, 0)
        self.best, self.bad_epochs, self.divisions = math.inf, 0, 0

    def config(self):
        return {"factor": self.factor, "patience": self.patience, "tol": self.tol,
                "min_lr": self.min_lr}

    def state(self):
        """JSON-ready: best is None until a loss has been seen."""
        return {"best": None if self.best == math.inf else self.best,
                "bad_epochs": self.bad_epochs, "divisions": self.divisions}

    def load_state(self, state):
        best = state["best"]
        self.best = math.inf if best is None else _number("best", best)
        self.bad_epochs = _number("bad_epochs", state["bad_epochs"], 0, integer=True)
        self.divisions = _number("divisions", state["divisions"], 0, integer=True)

    def observe(self, loss):
        """Record an epoch's loss (a NaN loss counts as a bad epoch)."""
        if math.isnan(loss) or loss > self.best - self.tol:
            self.bad_epochs += 1
        else:
            self.bad_epochs = 0
        if loss < self.best:
            self.best = loss
        if self.bad_epochs > self.patience:
            self.divisions += 1
            self.bad_epochs = 0

    def rate(self, base_lr, epoch, samples):
        # factor ** -divisions underflows to 0 where factor ** divisions would overflow
        return max(base_lr * self.factor ** -self.divisions, min(self.min_lr, base_lr))


SCHEDULES = {cls.name: cls for cls in (Constant, Step, Cosine, InvScaling, Adaptive)}


def from_config(name, config, state=None):
    """The schedule of this name built from its config() (and state(), for Adaptive)."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_schedule: unknown schedule {name!r}; expected one of "
                         f"{', '.join(SCHEDULES)}")
    schedule = SCHEDULES[name](**config)
    if state:
        if not isinstance(state, dict) or not hasattr(schedule, "load_state"):
            raise ValueError(f"lr_schedule: {name} keeps no state like {state!r:.60}")
        schedule.load_state(state)
    return schedule

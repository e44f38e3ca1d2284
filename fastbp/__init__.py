"""fastbp: fast, allocation-free training of multilayer perceptrons on multicore CPUs."""
from . import _environment

_environment.quiet_ctrl_c()   # first: Numba's import takes a while
_environment.check()
try:
    from . import kernels
    from ._threads import (get_blas, get_num_threads, get_work_split, set_blas, set_num_threads,
                           set_work_split)
    from .gradcheck import gradcheck
    from .model import MLP
    from .monitor import GradientHealthWarning, GradientMonitor
    from .optim import SGD, Adam, AdamW, RMSprop
    from . import schedules
    from .training import DivergenceError, History, fit
    from . import data
    from .data import DataError
    from .io import ModelFileError, load, load_checkpoint, save
    from .predictor import Predictor, load_predictor
    from .plotting import plot_history
    from . import export   # (its onnx, torch and safetensors are imported when used)
except KeyboardInterrupt:
    _environment.interrupted()

__version__ = "0.1.0"
__all__ = ["MLP", "SGD", "Adam", "AdamW", "RMSprop", "schedules", "load_checkpoint", "fit",
           "gradcheck", "set_num_threads", "get_num_threads", "set_work_split",
           "get_work_split", "set_blas", "get_blas", "kernels",
           "DivergenceError", "GradientMonitor", "GradientHealthWarning", "History", "data",
           "DataError", "save", "load", "ModelFileError", "plot_history", "load_predictor",
           "Predictor", "export", "__version__"]

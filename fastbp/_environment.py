"""Checks, at import, that Numba can compile and run fastbp's kernels in this environment.

Some Numba settings break fastbp in ways that surface late and obscurely: ``NUMBA_NUM_THREADS=0``
fails inside ``import numba``, ``NUMBA_DISABLE_JIT=1`` leaves no compiled code to call, and a
``NUMBA_THREADING_LAYER`` that cannot load fails at the first parallel loop. Each is reported
here in one sentence: an ImportError for a library user, one line on stderr and exit status 2
for the ``fastbp`` command (which also exits 130, with one line and no traceback, on Ctrl-C
while fastbp imports: quiet_ctrl_c).
"""
import os
import signal
import sys
import threading

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _problem():
    """What stops Numba from running fastbp's kernels here, or None."""
    threads = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if threads.lstrip("+-").isdigit() and int(threads) < 1:
        return (f"NUMBA_NUM_THREADS={threads}: Numba needs at least one thread; unset it or "
                "give a positive count")
    try:
        import numba
        from numba.np.ufunc import parallel
    except Exception as exc:  # noqa: BLE001  (any failure to start Numba ends here)
        return f"Numba cannot start: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    if numba.config.DISABLE_JIT:
        return ("NUMBA_DISABLE_JIT is set: fastbp's kernels only run compiled; unset it")
    if os.environ.get("NUMBA_THREADING_LAYER"):
        try:
            parallel._launch_threads()
        except (ValueError, ImportError, OSError) as exc:
            first = str(exc).strip().splitlines()[0]
            return (f"NUMBA_THREADING_LAYER={os.environ['NUMBA_THREADING_LAYER']}: {first} "
                    "(unset it, or install the layer it names)")
    return None


def _running_the_command():
    """True when this import starts the ``fastbp`` command (its script, or python -m fastbp)."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("fastbp", "fastbp.exe", "fastbp-script.py"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return sys.argv[:1] == ["-m"] and any(a == "-m" and b == "fastbp"
                                          for a, b in zip(argv, argv[1:]))


def check():
    """Raise ImportError naming the setting that stops fastbp (or exit 2 from the command)."""
    problem = _problem()
    if problem is None:
        return
    if _running_the_command():
        print(f"fastbp: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    raise ImportError(f"fastbp: {problem}")


def exit_interrupted(signum, frame):
    # Straight out: a KeyboardInterrupt raised here could land inside a ctypes callback (which
    # swallows it) or in the middle of Numba's own import; nothing has been written yet.
    print("fastbp: interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


def quiet_ctrl_c():
    """For the ``fastbp`` command, from the first statement of fastbp's import until its main
    installs its own handler: Ctrl-C ends it at once with exit status 130 and one line. A
    library user's Ctrl-C handling is left as it is."""
    if _running_the_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, exit_interrupted)
        except ValueError:   # not the main thread: fastbp imported from a thread of the caller's
            pass


def interrupted():
    """Ctrl-C while fastbp imports: the command exits 130 in silence; a library user gets the
    KeyboardInterrupt."""
    if _running_the_command():
        print("fastbp: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    raise KeyboardInterrupt


class HeldInterrupt:
    """Holds Ctrl-C (SIGINT, and SIGTERM, which the command hands to it) back until the block
    ends and records it in ``received``: a save must finish, or the trained weights are lost,
    and a library writing a file (PyTorch's) can abort the process when interrupted inside
    its own code. Main thread only (elsewhere, nothing is held)."""

    def __enter__(self):
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:   # (the caller's)
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self.received = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

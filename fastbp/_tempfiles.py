"""Temporary files written beside their destination, then renamed onto it.

Each name carries the writer's process id and host, so that a later writer can remove the ones
left by a process that was killed mid-write (SIGKILL, power loss) without touching those of a
process still writing.
"""
import os
import re
import socket
import tempfile


def _host():
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def create_beside(path, suffix):
    """(fd, temporary path) in the folder of ``path``, after removing stale ones of its own."""
    folder, name = os.path.split(os.path.abspath(path))
    _remove_stale(folder, name, suffix)
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.{os.getpid()}@{_host()}.",
                            suffix=suffix)


def _remove_stale(folder, name, suffix):
    """Remove this name's temporary files left by processes of this host that have ended."""
    if os.name != "posix":   # os.kill(pid, 0) only probes a process on POSIX
        return
    own = re.compile(re.escape(f".{name}.") + r"(\d+)@" + re.escape(_host()) + r"\.\w+"
                     + re.escape(suffix))
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = own.fullmatch(entry)
        if match and not _running(int(match[1])):
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):   # another user's process, or not a pid
        return True
    return True

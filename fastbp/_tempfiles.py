"""Temporary files written beside their destination, then renamed onto it.

Each name carries the writer's process id and host, so that a later writer can remove the ones
left by a process that was killed mid-write (SIGKILL, power loss) without touching those of a
process still writing.
"""
import hashlib
import os
import re
import socket
import tempfile

# The random characters that tempfile.mkstemp puts in a name.
_RANDOM_CHARS = 8


def _host():
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def name_max(folder):
    """The longest file name, in bytes, that the file system of ``folder`` takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):   # not POSIX, or the limit is not known
        return 255


def create_beside(path, suffix):
    """(fd, temporary path) in the folder of ``path``, after removing stale ones of its own."""
    folder, name = os.path.split(os.path.abspath(path))
    tag = f"{os.getpid()}@{_host()}"
    room = name_max(folder) - len(f"..{tag}.") - _RANDOM_CHARS - len(os.fsencode(suffix))
    stem = _stem(name, room)
    _remove_stale(folder, stem, suffix)
    return tempfile.mkstemp(dir=folder, prefix=f".{stem}.{tag}.", suffix=suffix)


def _stem(name, room):
    """``name``, or when it would make the temporary's name longer than the file system takes
    (a legal but long name), its first bytes and a hash of the whole, ``room`` bytes in all:
    the hash keeps two long names that start alike from sharing their temporaries' names."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:_RANDOM_CHARS]
    # (A multi-byte character cut in two decodes to escapes that encode back to its bytes.)
    return os.fsdecode(raw[:max(room - len(digest) - 1, 0)]) + "~" + digest


def _remove_stale(folder, name, suffix):
    """Remove the temporary files of this name (a stem) left by processes of this host that
    have ended."""
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

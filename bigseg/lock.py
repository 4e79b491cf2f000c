"""One run per output folder at a time.

Two runs writing into one folder would leave a model of one, labels of both and
a summary of either. ``OUT/.bigseg.lock`` is held with ``flock`` for the whole
run: the kernel drops it when the holding process dies, however it dies, so a
killed run leaves no stale lock behind. The file records who holds it, so the
refusal can name the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".bigseg.lock"
#: folders this process holds, so a command that locks before starting its workers can call a
#: function that locks again (flock on a second descriptor would refuse its own process)
_held: set = set()


class FolderBusyError(RuntimeError):
    """Another bigseg process is writing into the same output folder."""


class FolderNotWritableError(OSError):
    """The output folder cannot be created or written."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def _describe(raw: str) -> str:
    try:
        h = json.loads(raw)
        return f"process {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return "another bigseg process"


@contextlib.contextmanager
def output_lock(out_dir):
    """Hold ``out_dir``'s lock for the duration of the block; create the folder if needed.

    Raises :class:`FolderBusyError` naming the holder when another process has
    it, and :class:`FolderNotWritableError` when the folder cannot be written
    (read-only, full, or not a folder), before any work starts.
    """
    import fcntl

    out_dir = Path(out_dir)
    key = os.path.realpath(out_dir)
    if key in _held:
        yield
        return
    path = out_dir / LOCK_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise FolderNotWritableError(f"output folder {out_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise FolderBusyError(f"output folder {out_dir} is in use by {held_by}; wait for it to finish "
                                  f"or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        except OSError as exc:   # a full disk fails here, before any work
            raise FolderNotWritableError(f"output folder {out_dir}: cannot write there "
                                         f"({exc.strerror or exc})") from None
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)   # closing the descriptor releases the flock

"""One run per output folder at a time.

Two runs writing into one folder would leave a model of one, labels of both and
a summary of either. ``OUT/.bigseg.lock`` is held with ``flock`` for the whole
run: the kernel drops it when the holding process dies, however it dies, so a
killed run leaves no stale lock behind. The file records who holds it, so the
refusal can name the holder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from .safety import UnsafeFileError, check_output_folder, kind_of, remove_stale_temps

LOCK_NAME = ".bigseg.lock"
#: what bigseg writes directly in an output folder: none of these may be a symbolic link, nor hold one
#: (checked once the lock is held, before anything is written)
OUTPUT_ENTRIES = ("store.zarr", "records", "model", "labels", "color", "activations", "overlay", "constituents",
                  "constituents_color", "constituents_overlay", "summary.json", "phase_fractions.csv",
                  "phase_fractions_summary.csv", "constituent_fractions.csv", "constituent_fractions_summary.csv",
                  "constituent_fingerprints.png",
                  "fingerprints.png", "report.html", "select_k.json", "select_k.png",
                  "comparison.md", "comparison.json", "baselines", "run")
#: the folders whose files a killed writer may have left half-written under a temporary name
TEMP_FOLDERS = (".", "records/ingest", "records/features", "records/segment") + tuple(
    name for name in OUTPUT_ENTRIES if "." not in name and name != "records")
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
    Raises :class:`bigseg.safety.UnsafeFileError` naming the entry when the
    lock file is a link, a hard link, a FIFO or a folder, or when an entry
    bigseg writes (``OUTPUT_ENTRIES``) is or holds a symbolic link. Once held,
    temporary files a killed run left (bigseg's own names only) are removed.
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
    except OSError as exc:
        raise FolderNotWritableError(f"output folder {out_dir}: cannot write there ({exc.strerror or exc})") from None
    fd = _open_lock_file(path)
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
        # what lies in the folder is not trusted: a link there would carry writes (or deletions) elsewhere
        check_output_folder(out_dir, OUTPUT_ENTRIES)
        for sub in TEMP_FOLDERS:      # files a killed run was writing; only bigseg's own temporary names
            remove_stale_temps(out_dir / sub)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)   # closing the descriptor releases the flock


def _open_lock_file(path: Path) -> int:
    """A descriptor of the lock file, created if absent; refused, naming it, when it is a link, not a
    regular file, or a file with other names (a hard link: writing the holder would change another file)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"lock file {path}: is a symbolic link; bigseg will not write through it; "
                                  f"remove it") from None
        if exc.errno == errno.EISDIR:
            raise UnsafeFileError(f"lock file {path}: is a folder, not bigseg's lock file; remove it") from None
        raise FolderNotWritableError(f"output folder {path.parent}: cannot write there "
                                     f"({exc.strerror or exc})") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {kind_of(st.st_mode)}, not a regular file"
    elif st.st_nlink > 1:
        problem = f"has {st.st_nlink} hard links, so writing it would change another file"
    if problem:
        os.close(fd)
        raise UnsafeFileError(f"lock file {path}: {problem}; remove it")
    return fd

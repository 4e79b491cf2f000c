"""What bigseg does not trust, and the rules it reads and writes by (see ``docs/threat-model.md``).

bigseg trusts the user's command line and settings. It does not trust the
files it reads (images, masks, tables, model folders: any of them may be a
device, a FIFO, a link or huge) nor anything already inside an output folder
(a link there may point anywhere). This module holds the few checks every
reader and writer shares:

* :func:`read_regular` / :func:`check_regular`: a file is read only when it is
  a regular file of bounded size, opened so that a FIFO cannot block;
* :func:`refuse_links` / :func:`check_output_folder`: nothing inside an
  output folder is followed through a symbolic link bigseg did not make (it
  makes none);
* :func:`csv_cell` / :func:`csv_row`: no text cell of a CSV bigseg writes can
  start a spreadsheet formula (OWASP's rule);
* :func:`excerpt`: a value quoted in a message is short, however large it is.

Standard library only, so every module can import it.
"""

from __future__ import annotations

import hashlib
import os
import re
import reprlib
import stat
from pathlib import Path

#: longest excerpt of a value quoted in a message
EXCERPT_CHARS = 80
#: a settings file or a table bigseg reads is text a person writes: far below this
MAX_TEXT_BYTES = 16 * 2**20


class UnsafeFileError(ValueError):
    """A file or folder bigseg will not read or write through; the message names it."""


# --- messages ----------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 6, 6, 6, 6
_repr.maxstring = _repr.maxother = _repr.maxlong = EXCERPT_CHARS + 2


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters plus ``...``; bounded in time too (nested values are
    shown to a few levels and elements, never expanded whole)."""
    text = repr(value[: limit + 1]) if isinstance(value, str) else " ".join(_repr.repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def short_name(name, limit: int = EXCERPT_CHARS) -> str:
    """A file or image name for a message: itself when short, else its start, ``...`` and its end."""
    name = str(name)
    if len(name) <= limit:
        return name
    half = (limit - 3) // 2
    return f"{name[:half]}...{name[-half:]}"


# --- reading untrusted files -------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words (``a regular file``, ``a FIFO (named pipe)``, ...)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _check_stat(st: os.stat_result, path, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{what} {path}: is {kind_of(st.st_mode)}, not a regular file; bigseg reads only "
                              f"regular files")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeFileError(f"{what} {path}: {st.st_size} bytes, more than the {max_bytes} a {what} may have")


def check_regular(path, what: str = "file", max_bytes: int | None = None) -> os.stat_result:
    """Raise :class:`UnsafeFileError` unless ``path`` (links followed) is a regular file of at most
    ``max_bytes``; ``OSError`` (missing, no permission) passes through. Returns its ``stat``."""
    st = os.stat(path)
    _check_stat(st, path, what, max_bytes)
    return st


def read_regular(path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES, follow_links: bool = True) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``.

    Opened with ``O_NONBLOCK`` (a FIFO cannot block the open) and checked
    with ``fstat`` on the open descriptor, so a file swapped after a check is
    caught too; ``follow_links=False`` refuses a symbolic link. A device such
    as ``/dev/zero`` is refused before one byte is read. Raises
    :class:`UnsafeFileError` (one line naming ``what`` and the path), or
    ``OSError`` when the file cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        if os.path.islink(path):
            raise UnsafeFileError(f"{what} {path}: is a symbolic link; bigseg does not read through it")
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        _check_stat(os.fstat(fd), path, what, max_bytes)      # before Python's open, which refuses a folder itself
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb", closefd=True) as fh:
        data = fh.read(max_bytes + 1)          # the file may have grown since the fstat
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{what} {path}: more than the {max_bytes} bytes a {what} may have")
    return data


def read_text(path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """:func:`read_regular` decoded as UTF-8 (a byte-order mark, as spreadsheets write it, is dropped);
    another encoding is one line naming the file and the first bad byte."""
    data = read_regular(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnsafeFileError(f"{what} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                              f"save it as UTF-8") from None


# --- writing inside an output folder -----------------------------------------------------

def refuse_links(root, paths) -> None:
    """Raise :class:`UnsafeFileError` naming the first of ``paths`` that is, or lies under, a symbolic link
    below ``root`` (``root`` itself is the user's choice and may be one)."""
    root = Path(root)
    for path in paths:
        path = Path(path)
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            raise UnsafeFileError(f"{path}: lies outside the output folder {root}; bigseg writes only inside it") \
                from None
        here = root
        for part in parts:
            here = here / part
            if os.path.islink(here):
                raise UnsafeFileError(f"{here}: is a symbolic link inside the output folder; bigseg makes none "
                                      f"and will not write or delete through it; remove it")


def foreign_entry(folder) -> tuple[Path, str] | None:
    """The first entry of ``folder``'s whole tree (links not followed) that is neither a regular file nor a
    folder, and what it is (``a symbolic link``, ``a FIFO (named pipe)``, ...); None when there is none.

    bigseg writes only regular files and folders: anything else was put by
    someone else, and a FIFO or device would block or never end a read.
    """
    stack = [Path(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                return Path(entry.path), "a symbolic link"
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif not entry.is_file(follow_symlinks=False):
                try:
                    return Path(entry.path), kind_of(entry.stat(follow_symlinks=False).st_mode)
                except OSError:
                    return Path(entry.path), "not a regular file"
    return None


def check_output_folder(out_dir, owned) -> None:
    """Refuse, before anything is written, an output folder holding a link (or a FIFO, a device) where bigseg
    writes.

    ``owned`` are the names of the files and folders bigseg writes directly
    in ``out_dir``; each that is a link or no regular file or folder, or a
    folder with such an entry anywhere inside, is refused with one line
    naming it. bigseg makes no links, so any link there was put by someone
    else and may point anywhere; a FIFO or device would block a read.
    """
    out_dir = Path(out_dir)
    for name in owned:
        path = out_dir / name
        refuse_links(out_dir, [path])
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            found = foreign_entry(path)
            if found:
                raise UnsafeFileError(f"{found[0]}: is {found[1]} inside the output folder, where bigseg writes "
                                      f"only files and folders of its own; it will not read, write or delete "
                                      f"through it; remove it")
        elif not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{path}: is {kind_of(mode)} inside the output folder, where bigseg writes only "
                                  f"files and folders of its own; remove it")


#: the temporary names :func:`bigseg.io.atomic_write_bytes` gives a file while it is written (``tempfile``'s
#: eight random characters after :func:`temp_prefix`), and those of earlier versions (``.<name>.<random>.tmp``)
TEMP_PATTERN = re.compile(r"^\.(bigseg-[0-9a-f]{16}|.+\.(png|json|csv|html|tif|npz|md))\.[a-z0-9_]{8}\.tmp$")


def temp_prefix(name: str) -> str:
    """The start of a temporary name for ``name``: short whatever ``name``'s length (a hash of it), so a
    255-byte file name still has a temporary name."""
    return f".bigseg-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}."


def remove_stale_temps(folder) -> int:
    """Delete the temporary files a killed writer left in ``folder`` (only names of :data:`TEMP_PATTERN`,
    only regular files, never through a link); returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


# --- CSV cells -----------------------------------------------------------------------------

#: a cell starting with one of these is read as a formula by spreadsheets (OWASP, CSV injection); a leading
#: quote is guarded too, so that :func:`csv_value` undoes the guard exactly
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def csv_cell(value):
    """A CSV cell no spreadsheet runs: text starting with ``= + - @``, a tab or a carriage return gets a
    single quote before it (OWASP); numbers, and text that is a plain number, stay as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def csv_row(cells) -> list:
    """:func:`csv_cell` of every cell: what every CSV writer of bigseg passes to ``csv.writer.writerow``."""
    return [csv_cell(c) for c in cells]


def csv_text(rows) -> str:
    """The CSV text of ``rows`` (lists of cells), each through :func:`csv_row`, one ``\\n`` per row: what
    every CSV file bigseg writes is made with."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(csv_row(row))
    return buf.getvalue()


def csv_value(cell: str) -> str:
    """The text :func:`csv_cell` guarded (a cell read back from a CSV bigseg wrote)."""
    if cell.startswith("'") and len(cell) > 1 and cell[1] in _FORMULA_START:
        return cell[1:]
    return cell

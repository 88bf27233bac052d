"""The one atomic write: every file the package writes goes through `write_atomic`.

Write beside the target, then rename over it: a crash or a full disk leaves the previous
file, never half of one, and no temporary behind. The temporary's name carries the pid, so
two processes writing one file each leave a whole one. The target is checked first: only a
regular file is ever replaced (never a device, a FIFO or a directory), and a target whose
folder is missing or not writable is refused before anything is written.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import LadderError


class OutputPathError(LadderError, OSError):
    """A path the package was asked to write that it must not, or cannot, replace."""


def check_output(path: Path | str, *, make_parent: bool = False) -> Path:
    """`path` if it is a place a regular file may be written; else one clear line."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be written ({e.strerror or e})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            try:
                st = path.stat()
            except OSError:
                raise OutputPathError(f"{path}: a broken symbolic link; not written through") from None
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise OutputPathError(
                f"{path}: not a regular file (a device, FIFO or socket); refusing to replace it"
            )
    parent = path.parent
    if make_parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputPathError(f"{path}: cannot create its folder ({e.strerror or e})") from None
    if not parent.is_dir():
        raise OutputPathError(f"{path}: its folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: its folder {parent} is not writable")
    return path


def write_atomic(
    path: Path | str,
    content: bytes | str | Callable[[Path], None],
    *,
    make_parent: bool = False,
    hidden: bool = False,
) -> Path:
    """Write `content` (bytes, text, or a function that writes the file it is given) to
    `path` atomically. `hidden`: the temporary's name starts with a dot."""
    path = check_output(path, make_parent=make_parent)
    prefix = "." if hidden else ""
    tmp = path.with_name(f"{prefix}{path.name}.{os.getpid()}.tmp")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# A name that becomes part of a file name (a run id, a step, a study, a protocol tag). Names
# read from a store, a sweep study or a step file are data someone may have edited: each is
# checked here before it is joined to a folder, so a store never decides where a file goes.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=,:-]{0,159}")


class UnsafeName(LadderError, ValueError):
    pass


def safe_name(name: object, what: str = "name") -> str:
    """`name` if it is one plain file-name component (no '/', no '..', no leading dot)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise UnsafeName(
            f"{what} {name!r} cannot name a file: letters, digits, '.', '_', '-', '=', ',' and ':' "
            "only (at most 160, no '/' or '..')"
        )
    return name


def save_figure(fig, path: Path | str, dpi: int) -> Path:
    """A matplotlib figure into `path` through write_atomic (so a FIFO or a device named as
    the figure is refused, and a half-drawn file never appears); the format from the suffix."""
    kind = Path(path).suffix.lstrip(".").lower() or "png"
    return write_atomic(
        path, lambda tmp: fig.savefig(tmp, format=kind, dpi=dpi), make_parent=True, hidden=True
    )

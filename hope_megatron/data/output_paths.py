"""Where a tool will write, checked before it does any work; leftovers of killed runs removed safely.

Used by tools/train_tokenizer.py, tools/clean_corpus.py, tools/preprocess_data.py and the converter. Each check
raises OutputPathError (a ValueError) with one sentence naming the flag, the path and what to do:
a path component that is a file, a directory where a file is wanted, a read-only or unwritable directory (found by
creating and deleting a probe file in the nearest existing directory: it tells read-only file systems, permissions
and full disks apart), and too little free space for a known output size. Nothing is created by a check.

Temporary files are named `<final name>.tmp-<pid>`. `remove_stale_temporaries` deletes one only when its writer is
gone: the pid is not alive on this host AND nobody holds an flock on the file (a live writer on another host sharing
the file system holds one, see `lock_while_writing`).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
from typing import List, Optional

_TMP_TAG = ".tmp-"


class OutputPathError(ValueError):
    """An output location that cannot be written, with one sentence naming the flag and path."""


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def check_dir(flag: str, value: str, directory: str, need_bytes: int = 0) -> None:
    """`directory` (created later if missing) can receive files: no component is a file, writable, enough space."""
    base = _nearest_existing(directory)
    if not os.path.isdir(base):
        raise OutputPathError(f"{flag} {value}: {base} is a file, not a directory; choose another path or move the file.")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk (no space left)",
               errno.EDQUOT: "is over its disk quota"}.get(e.errno, "is not writable (permission denied)"
                                                           if e.errno in (errno.EACCES, errno.EPERM) else
                                                           f"cannot be written ({e.strerror})")
        raise OutputPathError(f"{flag} {value}: {base} {why}; choose a writable location.") from e
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise OutputPathError(f"{flag} {value}: {base} has {human_bytes(free)} free but the output needs about "
                                  f"{human_bytes(need_bytes)}; free space or choose another location.")


def check_file(flag: str, value: str, path: str, need_bytes: int = 0) -> None:
    """`path` can be (re)written as a file: not a directory, its directory passes check_dir."""
    if os.path.isdir(path):
        raise OutputPathError(f"{flag} {value}: {path} is a directory; name a file.")
    check_dir(flag, value, os.path.dirname(os.path.abspath(path)), need_bytes)


def check_output_dir(flag: str, path: str, need_bytes: int = 0) -> None:
    """`path` is (or will be created as) a directory."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a file, not a directory; pass a directory path.")
    check_dir(flag, path, path, need_bytes)


def enospc_message(path: str, err: OSError) -> Optional[str]:
    """One sentence for a disk that filled up while writing, or None for other errors."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {path} filled up while writing it ({err.strerror}); free space and re-run"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _unlocked(path: str) -> bool:
    """True when no process holds an flock on path (the writer of a live run does)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def lock_while_writing(path: str) -> int:
    """Hold an flock on the temporary file `path` for the writer's lifetime (released when the fd closes or the process
    dies): remove_stale_temporaries never takes a live writer's file, whatever host it runs on."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_stale_temporaries(final_path: str) -> List[str]:
    """Delete `final_path.tmp-<pid>` files whose writer is gone (pid dead here and file unlocked); returns them."""
    removed = []
    for tmp in sorted(glob.glob(glob.escape(final_path) + _TMP_TAG + "*")):
        pid = tmp.rsplit(_TMP_TAG, 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)) or not _unlocked(tmp):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed

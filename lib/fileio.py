"""Atomic file writes: the one helper every writer of the project goes through.

A file is written to a temporary name beside its target and moved into place with ``os.replace``,
so a reader (or a resumed run) sees the old complete file or the new complete file, never a half
written one. On any failure the temporary file is removed and the target is left as it was.
Temporary names are ``<target>.tmp<pid><suffix>``; ``<suffix>`` keeps the extension for writers
that pick the format from it (``cv2.imwrite``, matplotlib, ``np.savez``).
"""
import contextlib
import glob
import json
import os

TMP_MARK = ".tmp"


def temporary_path(path, keep_extension=False):
    """The temporary name of ``path`` for this process."""
    suffix = os.path.splitext(path)[1] if keep_extension else ""
    return f"{path}{TMP_MARK}{os.getpid()}{suffix}"


def _fsync(path):
    try:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError:
        pass   # a file system without fsync (some network mounts): the rename still orders the write


@contextlib.contextmanager
def atomic_path(path, keep_extension=False, sync=True):
    """``with atomic_path(target) as tmp: write(tmp)``: ``tmp`` replaces ``target`` when the block
    succeeds; on an exception ``tmp`` is removed and the exception propagates."""
    tmp = temporary_path(path, keep_extension)
    try:
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8", sync=True, newline=None):
    """``with atomic_open(target) as f: f.write(...)``: a file object on the temporary name
    (``newline`` as in ``open``: "" for the csv module)."""
    with atomic_path(path, sync=sync) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding,
                  newline=None if "b" in mode else newline) as f:
            yield f
            f.flush()


def atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def atomic_write_json(path, data, indent=1, sort_keys=True):
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=indent, sort_keys=sort_keys)
    return path


def atomic_save(path, save, keep_extension=False):
    """``save(tmp_path)`` writes the file (e.g. ``net.save_parameters``, ``np.savez``) atomically."""
    with atomic_path(path, keep_extension=keep_extension) as tmp:
        save(tmp)
    return path


def stale_temporaries(folder):
    """Temporary files that an interrupted writer left in ``folder`` (any process id)."""
    return sorted(p for p in glob.glob(os.path.join(glob.escape(folder), f"*{TMP_MARK}*"))
                  if _is_temporary(os.path.basename(p)))


def _is_temporary(name):
    return _pid_of(name) is not None


def _pid_of(name):
    head, mark, tail = name.rpartition(TMP_MARK)
    digits = tail.split(".", 1)[0]
    return int(digits) if head and mark and digits.isdigit() else None


def temporary_pid(path):
    """The process id in a temporary file's name (``<target>.tmp<pid><suffix>``), or None."""
    return _pid_of(os.path.basename(path))

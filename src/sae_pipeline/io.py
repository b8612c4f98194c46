"""Atomic output writers: every artifact goes to a temp file in the same folder, then ``os.replace``.

DVC hashes bytes, so the writers also keep artifacts byte-reproducible (see ``save_torch``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    mkstemp creates its file mode 0600; the output gets what a plain ``open()`` would give (0666 minus the
    user's umask), so a shared or served result stays readable by others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    except PermissionError as e:  # mkstemp's error names its random temp file; the user needs the target
        raise PermissionError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_json(path: str | Path, obj: Any, compact: bool = False) -> None:
    """Indented for metrics (read in diffs); ``compact`` for large data files: one line, written by json's C
    encoder, which ``indent`` turns off (an order of magnitude faster on the per-latent table)."""
    if compact:
        text = json.dumps(obj, separators=(",", ":"), default=_jsonable)
    else:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
    write_text(path, text + "\n")


def unreadable(path, e: Exception) -> Exception:
    """The one-line StageError for an input file that cannot be read, whatever the reader raised."""
    from .runtime import StageError

    return StageError(f"{path} is unreadable ({type(e).__name__}): it is missing, truncated or corrupt. Run `dvc "
                      f"repro`: it restores {path} and every output a failed run removed (from DVC's run-cache, or "
                      "by rerunning their stages)")


def load_json(path: str | Path, required: tuple[str, ...] = ()) -> Any:
    """A JSON file; ``required``: keys the reader needs, each checked here, so that a file that parses but lacks
    one (edited by hand, written by another version) is a one-line StageError naming it, not a KeyError."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise unreadable(path, e) from None
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if missing:
        from .runtime import StageError

        raise StageError(f"{path} lacks {missing[0]!r}: it was edited or written by another version. Run `dvc "
                         f"repro`: it restores {path} and every output a failed run removed")
    return obj


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read eagerly, so that a truncated member fails here with a message naming the file
    (numpy raises zipfile.BadZipFile, zlib.error, EOFError or ValueError, depending on where the cut is)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any failure to read the file is the same user error, reported once
        raise unreadable(path, e) from None


def load_torch(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``; a corrupt file is a one-line error (never torch's advice to load it with
    weights_only=False, which would execute whatever the file contains)."""
    import torch

    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, OSError: all "unreadable"
        raise unreadable(path, e) from None


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    # np.savez writes a zip whose member names are the keys, not the file name, so bytes are stable.
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save to a file object: a path would embed the temp file's stem in the archive and change the bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def save_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows of dicts as CSV (the csv module, not pandas: it keeps every stage's start-up short)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or (list(rows[0]) if rows else []), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``path``; on success it replaces ``path`` whole (no stale files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except PermissionError as e:
        raise PermissionError(e.errno, e.strerror, str(path)) from None
    try:
        yield tmp
        mask = _umask()
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp's 0700, like mkstemp's 0600, is not what the user asked for
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

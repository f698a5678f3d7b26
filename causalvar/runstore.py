"""The run folder: per-cell records that survive a kill, one process at a time, atomic files.

Every analysis that lands cells on disk (localize, and later patching, validation, the dictionary
evaluation, a Ray executor) writes through one ``RunStore``:

    out/settings.json    what was run; a rerun with other settings is refused, naming the keys that differ
    out/cells.jsonl      one JSON line per finished row, appended cell by cell (one write, fsync'd)
    out/featurizers/...  each cell's fitted featurizer, written to a temporary folder, then renamed
    out/.lock            the pid (and host) of the process working on the folder
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import warnings
import weakref
from pathlib import Path

from featurizers import Featurizer


_TMP = ".tmp-"  # in the name of every temporary file or folder, so leftovers of a kill can be removed
_HELD: set[Path] = set()  # folders held by this process's open stores


def cell_key(row: dict) -> tuple:
    """(variable, featurizer, layer, position, dataset) of a table row, as strings where needed."""
    return row["variable"], row["featurizer"], str(row["layer"]), str(row["position"]), row.get("dataset", "random")


def featurizer_dir(variable, featurizer, layer, position) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(s))
    return f"featurizers/{safe(variable)}/{safe(featurizer)}/L{safe(layer)}_{safe(position)}"


class RunFolderError(ValueError):
    """A run folder that cannot be used: busy, other settings, a corrupt record, not writable."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired: a record cut by a kill, a lock left by a dead process."""


class RunStore:
    """A run folder, held by this process until ``close()`` (or the end of a ``with`` block).

    Args:
        folder: the run folder (created if missing).
        settings: JSON-able description of the run; the folder must hold the same or none.

    ``done()`` gives the rows already finished, keyed by ``cell_key``; ``write_cell`` saves
    a cell's featurizer and appends its rows.
    """

    def __init__(self, folder: str | Path, settings: dict):
        self.folder = ensure_folder(folder, "the run folder")
        self._lock = self.folder / ".lock"
        self._release = self._take_lock()
        try:
            _remove_leftovers(self.folder)
            self._check_settings(json.loads(json.dumps(settings, default=str)))
            self._done = self._read_cells()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- lock
    def _take_lock(self) -> weakref.finalize:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        key = self.folder.resolve()
        for attempt in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = _read_lock(self._lock)
                if attempt == 0 and not self._lock.exists():  # released meanwhile
                    continue
                if attempt == 0 and host == socket.gethostname() and pid is not None and not _alive(pid, key):
                    warnings.warn(f"{self._lock} was left by process {pid}, which is no longer running; "
                                  f"taking it over", RunFolderWarning, stacklevel=3)
                    self._lock.unlink(missing_ok=True)
                    continue
                where = "" if host == socket.gethostname() else f" on host {host}"
                holder = f"is in use by process {pid}{where}" if pid else "has a lock that names no process"
                raise RunFolderError(
                    f"{self.folder} {holder} (lock file {self._lock}); wait for that sweep to finish or use "
                    f"another folder. If no other sweep runs on it, delete {self._lock}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            _HELD.add(key)
            # released by close(), or when the store is dropped, or when the interpreter exits
            return weakref.finalize(self, _unlock, self._lock, key)

    def close(self) -> None:
        """Release the folder (idempotent)."""
        if hasattr(self, "_release"):
            self._release()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- settings and records
    def _check_settings(self, settings: dict) -> None:
        path = self.folder / "settings.json"
        if not path.exists():
            write_text(path, json.dumps(settings, indent=1))
            return
        previous = json.loads(path.read_text())
        if previous != settings:
            absent = "(absent)"
            diff = "; ".join(f"{k}: there {previous.get(k, absent)}, now {settings.get(k, absent)}"
                             for k in sorted(set(previous) | set(settings), key=str)
                             if previous.get(k, absent) != settings.get(k, absent))
            raise RunFolderError(f"{self.folder} holds a sweep with other settings ({diff}); "
                                 f"use another folder or delete it")

    def _read_cells(self) -> dict[tuple, dict]:
        path = self.folder / "cells.jsonl"
        if not path.exists():
            return {}
        data = path.read_bytes()
        lines = data.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        done, offset = {}, 0
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as e:
                    if i != last:
                        raise RunFolderError(f"{path} line {i + 1} is not a JSON record ({e}); the file is "
                                             f"corrupt: repair or delete that line, or use another folder") from None
                    warnings.warn(f"{path} line {i + 1} is cut short (a write interrupted by a kill?); "
                                  f"skipping it: its cell will be run again", RunFolderWarning, stacklevel=3)
                    with open(path, "r+b") as fh:  # later records start on a line of their own
                        fh.truncate(offset)
                    break
                done[cell_key(row)] = row
            offset += len(line) + 1
        else:
            if data and not data.endswith(b"\n"):  # cut just before the newline: complete it
                with open(path, "ab") as fh:
                    fh.write(b"\n")
        return done

    def done(self) -> dict[tuple, dict]:
        """The rows of finished cells, keyed by ``cell_key`` (variable, featurizer, layer, position, dataset)."""
        return dict(self._done)

    def write_cell(self, rows: list[dict], featurizer: Featurizer | None, key: tuple) -> None:
        """Save a finished cell: its featurizer (if it holds state) under ``featurizer_dir(*key)``, then
        its rows, appended to ``cells.jsonl`` in one write."""
        if featurizer is not None and featurizer.has_state:
            save_featurizer(featurizer, self.folder / featurizer_dir(*key))
        records = [json.dumps(row, default=str) for row in rows]
        with open(self.folder / "cells.jsonl", "a") as fh:
            fh.write("".join(r + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        self._done.update((cell_key(row), row) for row in map(json.loads, records))


def _read_lock(path: Path) -> tuple[int | None, str | None]:
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):  # vanished, or cut short by a kill between create and write
        return None, None


def _unlock(lock: Path, key: Path) -> None:
    lock.unlink(missing_ok=True)
    _HELD.discard(key)


def _alive(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` may still be working on ``folder``."""
    if pid == os.getpid():  # this process: only while one of its stores holds the folder (pids are reused)
        return folder in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --------------------------------------------------------------------- atomic files
def ensure_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` (and parents), or say in plain words why it cannot be."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise RunFolderError(f"cannot write {what} to {folder}: {existing} is a file, not a folder; "
                             f"choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise RunFolderError(f"cannot write {what} to {folder}: {e.strerror or e}; choose a folder you can "
                             f"write to") from None
    return folder


def _remove_leftovers(folder: Path) -> None:
    """Temporary files and folders of writes a kill cut short; a featurizer moved aside to be
    replaced goes back where it was if its replacement never arrived."""
    found = [*folder.glob(f".*{_TMP}*"), *(folder / "featurizers").rglob(f".*{_TMP}*")]
    for p in sorted(found, key=lambda p: len(p.parts)):
        if not p.exists():  # inside a leftover removed above
            continue
        dest = p.with_name(p.name[1:p.name.rindex(_TMP)])
        if p.name.endswith("-old") and not dest.exists():
            os.replace(p, dest)
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, fsync'd, then renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP}", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary file would be (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_featurizer(featurizer: Featurizer, dest: Path) -> None:
    """``featurizer.save`` into a temporary folder beside ``dest``, then renamed into place, so that
    ``dest`` always holds a complete featurizer (a previous one is replaced)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP}", dir=dest.parent))
    old = tmp.with_name(tmp.name + "-old")
    try:
        featurizer.save(tmp)
        if dest.exists():
            os.replace(dest, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

"""The run folder guard: may this run write here, and may it resume what is here?

:func:`check_run_folder` decides, without writing anything, whether a run may use a folder:

* the folder (or the nearest existing folder above it) is a writable folder on a writable
  file system, owned by this user, with room for the checkpoints;
* a folder that already holds a run (``config.yaml``, ``metrics.jsonl`` or checkpoints) is
  refused unless the run resumes it (``--resume``) or replaces it (``--overwrite``);
* a resume whose config differs from the run's (the copy stored in the latest checkpoint, else
  ``config.yaml``) in anything but the run's length and presentation (``training.epochs``,
  ``training.eval_batch_size``, ``training.checkpoint.*``, ``name``, ``output.*``,
  ``parallel.*``) is refused with the list of differing keys, unless each change is allowed
  explicitly (``--allow-change KEY``). An allowed change of optimizer resets the stored
  optimizer state, and says so; a network whose parameters no longer fit the checkpoint is
  refused naming the first layer that differs.

One run per folder: a run holds the folder's lock file ``.fnn-lock`` (its pid, host and start
time, created exclusively) while it runs; another run on the folder is refused naming the
holder, and the lock of a run that died (same host, process gone) is taken over, with a note.

Only then does :func:`open_run_folder` touch the folder: it takes the lock, removes the
temporary files of writes that were killed, and for ``--overwrite`` moves the old run's files
(``RUN_FILES``, the checkpoints and the folders ``RUN_FOLDERS`` -- ``tensorboard/``,
``mlruns/``, ``profile/`` -- and an MLflow file store the config puts inside the folder: what
fnn wrote; anything else stays and is listed) into
``.fnn-old-<time>/``, removed once the new run has started cleanly (:meth:`OpenRun.started`,
after its first epoch) and put back if it fails before. ``--overwrite`` is refused when the
config reads a file inside the folder (``training.pretrained``, ``data.path``).

Example:
    A finished two-epoch run of ``configs/xor.yaml`` (momentum) in a fresh folder:

    >>> import pathlib, tempfile
    >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
    >>> cfg = fnn.config.load_config(xor, ["training.epochs=2", "output.plots=false"])
    >>> run_dir = pathlib.Path(tempfile.mkdtemp()) / "xor"
    >>> fnn.run.train(cfg, run_dir, log=None) == run_dir
    True

    A new run may not write over it; a resume that changes the optimizer must say so:

    >>> check_run_folder(run_dir, cfg)
    Traceback (most recent call last):
    fnn.rundir.RunFolderError: .../xor: already holds a run (config.yaml, ..., checkpoints); pass
    --resume to continue it, --overwrite to replace it, or --out for a new folder
    >>> adam = fnn.config.load_config(xor, ["training.epochs=4", "output.plots=false",
    ...                                     "optimizer={name: adam, learning_rate: 0.01}"])
    >>> check_run_folder(run_dir, adam, resume=True)
    Traceback (most recent call last):
    fnn.rundir.RunFolderError: .../xor: --resume with a config that differs from the run's
    (checkpoints/latest.safetensors) in optimizer.name ('momentum' -> 'adam'); ...
    >>> check = fnn.checks.check_run(adam, fnn.run.build(adam), fnn.run.load_data(adam))
    >>> plan = check_run_folder(run_dir, adam, resume=True, allow_change=["optimizer"],
    ...                         train_state=check.train_state)
    >>> plan.resume, plan.reset_optimizer, plan.notes
    (True, True, ["optimizer.name changed ('momentum' -> 'adam'): the stored optimizer state is
    reset (moments and schedule start again)"])
    >>> import os
    >>> with open_run_folder(plan) as opened:  # now the folder may be touched; locked until the end
    ...     lock_holder(run_dir).pid == os.getpid(), opened.removed_temporary
    (True, [])
    >>> lock_holder(run_dir) is None
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import pwd
import shutil
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["RunFolderError", "RunFolderPlan", "check_run_folder", "open_run_folder",
           "OpenRun", "LockHolder", "lock_holder", "take_lock", "RunLock", "config_changes",
           "FREE_TO_CHANGE", "RUN_FILES", "RUN_FOLDERS", "LOCK", "stale_temporary_files",
           "check_checkpoint_files", "check_unlocked"]

# Every file fnn writes in a run folder (run.py, run_folder.py, diagnostics.py, plots, fnn eval):
# what --overwrite moves aside and removes; anything else in the folder is kept.
RUN_FILES = ("config.yaml", "summary.txt", "metrics.jsonl", "test.json", "curves.png",
             "diagnostics.jsonl", "gradflow.png", "doctor.json", "scalars.csv", "mlflow.json",
             "model.stablehlo", "model.onnx")
# Folders fnn's trackers and --profile write in a run folder (fnn.trackers, fit's profile):
# --overwrite moves them aside with the files
RUN_FOLDERS = ("tensorboard", "mlruns", "profile")
CHECKPOINTS = "checkpoints"
LOCK = ".fnn-lock"  # {"pid", "host", "since", "ticks"} of the run using the folder
OLD_RUN = ".fnn-old-"  # + time: where --overwrite keeps the old run until the new one started
# config keys that name files a run reads: --overwrite refuses when one lies inside the folder
READ_PATHS = ("training.pretrained", "data.path", "data.dir")
FREE_TO_CHANGE = ("training.epochs", "training.eval_batch_size", "training.checkpoint",
                  "training.compile_cache", "name", "output", "parallel")


class RunFolderError(ValueError):
    """A run folder this run may not use; the message starts with the folder."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The run that holds a folder's lock file: its process id, host and start time (UTC)."""

    pid: int
    host: str
    since: str
    ticks: int | None = None  # the process's start (Linux: /proc/<pid>/stat), against pid reuse

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"

    def is_stale(self) -> bool:
        """The holder ran on this host and its process is gone (or its pid now belongs to a
        process started later). A lock of another host is never stale: its process cannot be
        seen from here."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process
            pass
        stat = _proc_stat(self.pid)  # (state, start ticks), None where there is no /proc
        if stat is None:
            return False
        state, ticks = stat
        return state == "Z" or (self.ticks is not None and ticks != self.ticks)  # Z: killed


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time in clock ticks after boot (Linux's
    ``/proc/<pid>/stat``, fields 3 and 22); ``None`` where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # the name may hold spaces and ')'
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_lock(text: str) -> LockHolder | None:
    """The holder a lock file's text names; ``None`` unless it is a lock fnn wrote."""
    try:
        found = json.loads(text)
        holder = LockHolder(found["pid"], found["host"], found["since"], found.get("ticks"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    valid = (type(holder.pid) is int and holder.pid > 0 and isinstance(holder.host, str)
             and isinstance(holder.since, str)
             and (holder.ticks is None or type(holder.ticks) is int))
    return holder if valid else None


def _lock_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def lock_holder(run_dir: str | os.PathLike) -> LockHolder | None:
    """Who holds ``run_dir``'s lock file (``.fnn-lock``), or ``None`` when there is none.

    Raises:
        RunFolderError: the lock file is not one fnn wrote (or is still being written).
    """
    path = Path(run_dir) / LOCK
    text = _lock_text(path)
    if text is None:
        return None
    holder = _parse_lock(text)
    if holder is None:
        raise RunFolderError(f"{run_dir}: its lock file {LOCK} is unreadable (a run may be "
                             f"starting there); if no run uses the folder, remove {path}")
    return holder


def _held_error(run_dir: Path, holder: LockHolder) -> RunFolderError:
    ended = "" if holder.host == socket.gethostname() else (
        f"; if that run has ended, remove {Path(run_dir) / LOCK}")
    return RunFolderError(f"{run_dir}: another run is using this folder ({holder}); wait for it "
                          f"to end, or choose another folder with --out{ended}")


def check_unlocked(run_dir: str | os.PathLike) -> None:
    """Refuse, writing nothing, a folder whose lock a live run holds (a stale lock is no
    refusal: :func:`take_lock` takes it over).

    Raises:
        RunFolderError: another run is using the folder (naming its pid, host and start).
    """
    holder = lock_holder(run_dir) if Path(run_dir).is_dir() else None
    if holder is not None and not holder.is_stale():
        raise _held_error(Path(run_dir), holder)


class RunLock:
    """This process's lock on a run folder; :meth:`release` (or leaving a ``with`` block)
    removes the lock file if it is still this process's."""

    def __init__(self, run_dir: Path, holder: LockHolder):
        self.path, self.holder = Path(run_dir) / LOCK, holder

    def release(self) -> None:
        try:
            if lock_holder(self.path.parent) == self.holder:
                self.path.unlink()
        except (RunFolderError, FileNotFoundError):
            pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def take_lock(run_dir: str | os.PathLike) -> tuple[RunLock, LockHolder | None]:
    """Take ``run_dir``'s lock (creating the folder): ``(lock, the stale holder taken over)``.

    The lock file is created exclusively (``O_EXCL``), so of two runs starting at once one
    gets it. A lock whose process is gone (same host) is stale and taken over.

    Raises:
        RunFolderError: another live run holds the folder (naming its pid, host and start).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> lock, stale = take_lock(folder)
        >>> lock_holder(folder).pid == os.getpid(), stale
        (True, None)
        >>> take_lock(folder)
        Traceback (most recent call last):
        fnn.rundir.RunFolderError: ...: another run is using this folder (pid ... on ... since
        ...); wait for it to end, or choose another folder with --out
        >>> lock.release()
        >>> lock_holder(folder) is None
        True
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path, taken_over = run_dir / LOCK, None
    for _ in range(3):
        stat = _proc_stat(os.getpid())
        mine = LockHolder(os.getpid(), socket.gethostname(), _now(), stat and stat[1])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:
            holder = lock_holder(run_dir)
            if holder is None:  # released meanwhile
                continue
            if not holder.is_stale():
                raise _held_error(run_dir, holder) from None
            _remove_stale_lock(path, holder)
            taken_over = holder
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(mine)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return RunLock(run_dir, mine), taken_over
    raise RunFolderError(f"{run_dir}: could not take its lock file {LOCK}: other runs keep "
                         "taking it; choose another folder with --out")


def _remove_stale_lock(path: Path, holder: LockHolder) -> None:
    """Remove a stale lock, unless another run took it over first (then leave that one)."""
    aside = path.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)  # of several runs taking it over, one moves it
    except FileNotFoundError:
        return
    try:
        if _parse_lock(_lock_text(aside) or "") != holder:  # a fresh lock: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


@dataclasses.dataclass
class RunFolderPlan:
    """What :func:`check_run_folder` decided."""

    path: Path
    resume: bool  # a checkpoint is there to resume from
    overwrite: bool  # remove the old run's files first
    reset_optimizer: bool = False  # resume the params, start the optimizer state afresh
    changes: list[str] = dataclasses.field(default_factory=list)  # allowed config changes
    notes: list[str] = dataclasses.field(default_factory=list)  # to tell the user
    folders: tuple[str, ...] = RUN_FOLDERS  # the folders --overwrite moves with the files


def _flatten(value: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value
    return out


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")


_MISSING = object()


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key path, old value, new value)`` of every leaf that differs (new config's order)."""
    a, b = _flatten(old, "", {}), _flatten(new, "", {})
    keys = list(b) + [k for k in a if k not in b]
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys
            if a.get(k, _MISSING) != b.get(k, _MISSING)]


def _show(value: Any) -> str:
    return "(none)" if value is _MISSING else repr(value)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path):
        path = path.parent
    return path


def _owner(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_writable(run_dir: Path, need_bytes: int) -> None:
    where = _existing_ancestor(run_dir)
    if not where.is_dir():
        raise RunFolderError(f"{run_dir}: {where} is a file, not a folder")
    st = os.stat(where)
    if where == run_dir.absolute() and st.st_uid != os.geteuid():
        raise RunFolderError(f"{run_dir}: the folder belongs to {_owner(st.st_uid)}, not to "
                             "you; choose another folder with --out")
    fs = os.statvfs(where)
    if fs.f_flag & os.ST_RDONLY:
        raise RunFolderError(f"{run_dir}: {where} is on a read-only file system; choose another "
                             "folder with --out")
    if not os.access(where, os.W_OK | os.X_OK):
        raise RunFolderError(f"{run_dir}: {where} is not writable ({os.strerror(errno.EACCES)})"
                             "; choose another folder with --out")
    free = fs.f_bavail * fs.f_frsize
    if need_bytes and free < need_bytes:
        raise RunFolderError(f"{run_dir}: {free / 2**20:.1f} MiB free on the disk, the run's "
                             f"checkpoints need about {need_bytes / 2**20:.1f} MiB; free some "
                             "space or choose another folder with --out")


def _holds_run(run_dir: Path) -> list[str]:
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    ckpts = run_dir / CHECKPOINTS
    if ckpts.is_dir() and any(ckpts.glob("*.safetensors")):
        found.append(CHECKPOINTS)
    return found


def _stored_config(run_dir: Path, latest: Path) -> tuple[dict[str, Any] | None, str]:
    """The config of the run in the folder, and where it was read: the latest checkpoint's own
    copy (the state it holds belongs to that config), else ``config.yaml``; ``None`` if neither."""
    from fnn.config import ConfigError, parse_config, read_yaml_file
    from fnn.train import checkpoint as ckpt

    raw, source = None, ""
    if latest.is_file():
        raw, source = ckpt.read_metadata(latest).get("config"), f"{CHECKPOINTS}/{latest.name}"
    if raw is None and (run_dir / "config.yaml").is_file():
        path = run_dir / "config.yaml"
        raw, source = read_yaml_file(path), "config.yaml"
    if not isinstance(raw, dict):
        return None, source
    try:
        return parse_config(raw), source
    except ConfigError:  # written by another version: compare what is there
        return raw, source


def check_run_folder(run_dir: str | os.PathLike, cfg: Mapping[str, Any], *,
                     resume: bool = False, overwrite: bool = False,
                     allow_change: Sequence[str] = (), train_state: Any = None,
                     checkpoint_bytes: int = 0) -> RunFolderPlan:
    """Decide whether a run of ``cfg`` may use ``run_dir``; writes nothing.

    Args:
        run_dir: the run folder.
        cfg: the run's validated config.
        resume: continue the run in the folder (``--resume``).
        overwrite: replace the run in the folder (``--overwrite``).
        allow_change: key paths (or their prefixes: ``optimizer``) a resume may change.
        train_state: the run's abstract train state (``fnn.checks.check_run``), to check that a
            resumed checkpoint fits the config's network and optimizer.
        checkpoint_bytes: the size of one checkpoint, to check the free disk space.

    Raises:
        RunFolderError: naming the folder and what to do.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError(f"{run_dir}: --resume continues the run in the folder, "
                             "--overwrite replaces it; give one of them")
    _check_writable(run_dir, 3 * checkpoint_bytes)  # latest, best, one being written
    check_checkpoint_files(run_dir)
    check_unlocked(run_dir)  # a stale lock is taken over when the folder is opened
    held = _holds_run(run_dir) if run_dir.is_dir() else []
    latest = run_dir / CHECKPOINTS / "latest.safetensors"
    plan = RunFolderPlan(run_dir, resume and latest.is_file(), overwrite and bool(held),
                         folders=RUN_FOLDERS + _mlflow_store(run_dir, cfg))
    if held and not resume and not overwrite:
        raise RunFolderError(f"{run_dir}: already holds a run ({', '.join(held)}); pass --resume "
                             "to continue it, --overwrite to replace it, or --out for a new "
                             "folder")
    if plan.overwrite:
        _check_reads_outside(run_dir, cfg)
    if plan.resume:
        from fnn.logs import LogError, check_logs
        try:
            check_logs(run_dir)  # a damaged line of metrics.jsonl or diagnostics.jsonl
        except LogError as e:
            raise RunFolderError(f"cannot resume: {e}") from None
    stored, source = _stored_config(run_dir, latest) if resume else (None, "")
    if stored is None:
        return plan
    changes = config_changes(stored, cfg)
    refused = [c for c in changes if not any(_under(c[0], k) for k in FREE_TO_CHANGE)
               and not any(_under(c[0], k) for k in allow_change)]
    if refused:
        shown = "; ".join(f"{k} ({_show(a)} -> {_show(b)})" for k, a, b in refused[:6])
        more = f"; and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise RunFolderError(f"{run_dir}: --resume with a config that differs from the run's "
                             f"({source}) in {shown}{more}; resume with the run's own config, "
                             "or pass --allow-change KEY for each change you mean "
                             "(training.epochs needs none)")
    plan.changes = [k for k, _, _ in changes]
    if plan.resume:
        _check_checkpoint(plan, latest, changes, train_state)
    return plan


CHECKPOINT_FILES = ("latest.safetensors", "best.safetensors")


def check_checkpoint_files(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder whose ``checkpoints/latest.safetensors`` or ``best.safetensors`` is
    there but is not a regular file (a directory, a FIFO, a dangling link): nothing fnn wrote,
    and nothing it can read, replace or remove. Reads and writes nothing.

    Raises:
        RunFolderError: naming the file and what to do.
    """
    from fnn.data.checks import file_kind

    for name in CHECKPOINT_FILES:
        path = Path(run_dir) / CHECKPOINTS / name
        kind = file_kind(path)
        if kind not in ("a regular file", "nothing"):
            raise RunFolderError(f"{path}: {kind}, not a checkpoint file; move it away (fnn "
                                 "keeps the run's checkpoints under this name)")


def _mlflow_store(run_dir: Path, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The top folder of run_dir that holds ``output.mlflow.tracking_uri``'s file store, when
    the config puts one inside the run folder (other than ``mlruns``, the default)."""
    uri = ((cfg.get("output") or {}).get("mlflow") or {}).get("tracking_uri")
    if not isinstance(uri, str) or "://" in uri and not uri.startswith("file:"):
        return ()
    from fnn.trackers import file_uri_path

    path = file_uri_path(uri) or Path(uri)
    try:
        inside = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return ()
    top = inside.parts[0] if inside.parts else ""
    return (top,) if top and top not in RUN_FOLDERS + (CHECKPOINTS,) else ()


def _check_reads_outside(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """--overwrite may not remove what the config reads (a pretrained checkpoint, data)."""
    inside = run_dir.resolve()
    for key in READ_PATHS:
        section, _, name = key.partition(".")
        value = cfg.get(section, {}).get(name)
        if isinstance(value, str) and value and Path(value).resolve().is_relative_to(inside):
            raise RunFolderError(f"{run_dir}: --overwrite would replace the run this config "
                                 f"reads from: {key} ({value}) is inside the folder; copy it "
                                 "elsewhere first, or choose another folder with --out")


def _check_checkpoint(plan: RunFolderPlan, latest: Path, changes: list, train_state: Any) -> None:
    from fnn.checks import first_mismatch
    from fnn.train import checkpoint as ckpt

    arrays = ckpt.load_tree(latest)
    if train_state is None:
        return
    for prefix, tree in (("params", train_state.params), ("model_state", train_state.model_state)):
        mismatch = first_mismatch(tree, arrays, prefix)
        if mismatch:
            raise RunFolderError(f"{plan.path}: cannot resume: {prefix} of {latest.name} do not "
                                 f"fit the config's network: {mismatch}; to start a new network "
                                 "from these weights, use training.pretrained in a new folder")
    renamed = [(a, b) for k, a, b in changes if k == "optimizer.name"]
    if renamed:
        a, b = renamed[0]
        plan.reset_optimizer = True
        plan.notes.append(f"optimizer.name changed ({_show(a)} -> {_show(b)}): the stored "
                          "optimizer state is reset (moments and schedule start again)")
        return
    stored = {k: tuple(v.shape) for k, v in arrays.items() if k.startswith("opt_state/")}
    if stored != _opt_shapes(train_state.opt_state):
        changed = [k for k, _, _ in changes if _under(k, "optimizer")]
        plan.reset_optimizer = True
        plan.notes.append(f"the optimizer state stored in {latest.name} does not fit the "
                          f"changed optimizer ({', '.join(changed) or 'optimizer'}): it is reset")


def _opt_shapes(opt_state: Any) -> dict[str, tuple[int, ...]]:
    """``{"opt_state/0/mu/dense_0/w": shape}``: the keys a checkpoint stores the state under."""
    import jax
    from fnn.train.checkpoint import path_str

    return {"/".join(p for p in ("opt_state", path_str(path)) if p): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]}


def stale_temporary_files(run_dir: str | os.PathLike) -> list[Path]:
    """Temporary files of atomic writes that were killed (``.NAME.XXXX.tmp``)."""
    run_dir = Path(run_dir)
    found = []
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp") if p.is_file()]
    return sorted(found)


@dataclasses.dataclass
class OpenRun:
    """A run folder this process has opened: its lock, and (``--overwrite``) the old run it
    keeps aside until :meth:`started`. A ``with`` block's end removes the old run if the block
    succeeded, restores it if the block failed before :meth:`started`, and releases the lock."""

    path: Path
    lock: RunLock
    stale_lock: LockHolder | None = None  # the dead run's lock taken over
    removed_temporary: list[Path] = dataclasses.field(default_factory=list)
    old_run: Path | None = None  # where --overwrite moved the replaced run's files
    kept: list[str] = dataclasses.field(default_factory=list)  # not fnn's: left in place
    folders: tuple[str, ...] = RUN_FOLDERS  # fnn's folders, moved aside with the files
    moved: bool = False  # the old run was moved aside whole (False: a move failed halfway)

    def started(self) -> None:
        """The new run has started cleanly (its first epoch is saved): remove the old run."""
        if self.old_run is not None:
            shutil.rmtree(self.old_run)
            self.old_run = None

    def restore(self) -> None:
        """Put the old run back (removing what the new run wrote), if it is still aside."""
        if self.old_run is None:
            return
        if self.moved:  # what is in the folder now is the new run's: removed
            old = {p.relative_to(self.old_run) for p in _fnn_files(self.old_run)}
            for path in _fnn_files(self.path):
                if path.relative_to(self.path) not in old:
                    path.unlink()
            for path in _fnn_folders(self.path, self.folders):
                shutil.rmtree(path)
        _move_run_files(self.old_run, self.path, self.folders)  # over the new run's files
        shutil.rmtree(self.old_run)
        self.old_run = None

    def __enter__(self) -> OpenRun:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        try:
            self.restore() if kind is not None else self.started()
        finally:
            self.lock.release()


def _fnn_files(folder: Path) -> list[Path]:
    """The files fnn wrote in a run folder (``RUN_FILES`` and checkpoints)."""
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    ckpts = folder / CHECKPOINTS
    if ckpts.is_dir():
        found += sorted(p for p in ckpts.glob("*.safetensors") if p.is_file())
    return found


def _fnn_folders(folder: Path, names: Sequence[str]) -> list[Path]:
    """The folders of ``names`` (``RUN_FOLDERS``...) that are in ``folder``."""
    return [folder / name for name in names if (folder / name).is_dir()
            and not (folder / name).is_symlink()]


def _move_run_files(source: Path, target: Path, folders: Sequence[str] = ()) -> None:
    for path in _fnn_files(source) + _fnn_folders(source, folders):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)


def _not_fnn_files(folder: Path) -> list[str]:
    """What else is in a run folder: names (``checkpoints/x`` inside checkpoints/)."""
    ours = set(RUN_FILES) | {LOCK, CHECKPOINTS}
    found = [p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())
             if p.name not in ours]
    ckpts = folder / CHECKPOINTS
    if ckpts.is_dir():
        found += [f"{CHECKPOINTS}/{p.name}" for p in sorted(ckpts.iterdir())
                  if not (p.suffix == ".safetensors" and p.is_file())]
    return found


def open_run_folder(plan: RunFolderPlan) -> OpenRun:
    """Open the folder a plan allows: take its lock (a stale one is taken over), remove the
    temporary files of writes that were killed, and (``--overwrite``) move the old run's files
    into ``.fnn-old-<time>/`` inside the folder. Use it as a ``with`` block around the run.

    Raises:
        RunFolderError: another run took the folder's lock since the plan was made.
    """
    run_dir = plan.path
    lock, stale_lock = take_lock(run_dir)
    opened = OpenRun(run_dir, lock, stale_lock, folders=plan.folders)
    try:
        opened.removed_temporary = stale_temporary_files(run_dir)
        for p in opened.removed_temporary:
            p.unlink(missing_ok=True)
        if plan.overwrite and (_fnn_files(run_dir) or _fnn_folders(run_dir, plan.folders)):
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            opened.old_run = run_dir / f"{OLD_RUN}{stamp}"
            opened.old_run.mkdir()
            _move_run_files(run_dir, opened.old_run, plan.folders)
            opened.moved = True
            opened.kept = [n for n in _not_fnn_files(run_dir) if n != opened.old_run.name + "/"]
    except BaseException:
        try:
            if opened.old_run is not None:  # a move that failed halfway: put back what moved
                opened.restore()
        finally:
            lock.release()
        raise
    return opened

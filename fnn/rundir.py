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

Only then does :func:`open_run_folder` touch the folder: it removes what ``--overwrite``
replaces and the temporary files of writes that were killed, and creates the folder.

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
    >>> open_run_folder(plan)            # now the folder may be touched; no stale files removed
    []
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pwd
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["RunFolderError", "RunFolderPlan", "check_run_folder", "open_run_folder",
           "config_changes", "FREE_TO_CHANGE", "RUN_FILES", "stale_temporary_files"]

RUN_FILES = ("config.yaml", "summary.txt", "metrics.jsonl", "test.json", "curves.png")
CHECKPOINTS = "checkpoints"
FREE_TO_CHANGE = ("training.epochs", "training.eval_batch_size", "training.checkpoint",
                  "training.compile_cache", "name", "output", "parallel")


class RunFolderError(ValueError):
    """A run folder this run may not use; the message starts with the folder."""


@dataclasses.dataclass
class RunFolderPlan:
    """What :func:`check_run_folder` decided."""

    path: Path
    resume: bool  # a checkpoint is there to resume from
    overwrite: bool  # remove the old run's files first
    reset_optimizer: bool = False  # resume the params, start the optimizer state afresh
    changes: list[str] = dataclasses.field(default_factory=list)  # allowed config changes
    notes: list[str] = dataclasses.field(default_factory=list)  # to tell the user


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
    from fnn.config import ConfigError, parse_config, parse_yaml
    from fnn.train import checkpoint as ckpt

    raw, source = None, ""
    if latest.is_file():
        raw, source = ckpt.read_metadata(latest).get("config"), f"{CHECKPOINTS}/{latest.name}"
    if raw is None and (run_dir / "config.yaml").is_file():
        path = run_dir / "config.yaml"
        raw, source = parse_yaml(path.read_text(), str(path)), "config.yaml"
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
    held = _holds_run(run_dir) if run_dir.is_dir() else []
    latest = run_dir / CHECKPOINTS / "latest.safetensors"
    plan = RunFolderPlan(run_dir, resume and latest.is_file(), overwrite and bool(held))
    if held and not resume and not overwrite:
        raise RunFolderError(f"{run_dir}: already holds a run ({', '.join(held)}); pass --resume "
                             "to continue it, --overwrite to replace it, or --out for a new "
                             "folder")
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


def open_run_folder(plan: RunFolderPlan) -> list[Path]:
    """Prepare the folder a plan allows: remove the replaced run's files (``--overwrite``) and
    stale temporary files, create the folder. Returns the removed temporary files."""
    run_dir = plan.path
    if plan.overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        ckpts = run_dir / CHECKPOINTS
        if ckpts.is_dir():
            for p in ckpts.glob("*.safetensors"):
                p.unlink()
    stale = stale_temporary_files(run_dir)
    for p in stale:
        p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return stale

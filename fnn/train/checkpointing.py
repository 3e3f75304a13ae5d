"""Checkpoints inside an epoch: when to write them, writing them in the background, and stopping
cleanly on SIGTERM/SIGINT.

* :class:`Checkpointing` -- the policy (``training.checkpoint`` in a config): every N steps
  and/or every M minutes, keeping the K most recent step checkpoints.
* :class:`BackgroundWriter` -- writes a train state while training goes on: the state is
  copied to the host first (the step loop then goes on; it does not wait for the disk), at
  most one write is in flight, and each file is written atomically and checksummed by
  :func:`fnn.train.checkpoint.save_tree`. ``checkpoints/step-<N>.safetensors`` is written and
  ``checkpoints/latest.safetensors`` made the same file (a hard link, renamed into place).
* :class:`StopSignals` -- on the first SIGTERM or SIGINT, asks the loop to stop after the
  current step (or scan chunk); on a second one, the process ends at once (the default action
  of the signal): every file fnn writes is renamed into place whole, so none is torn.
* :class:`Preempted` -- what ``fit`` raises once it has written ``latest`` after a signal;
  ``fnn train`` prints one line and exits with :data:`PREEMPTED_STATUS`.

Example:
    >>> policy = Checkpointing(every_steps=100, keep=2)
    >>> policy.due(steps=100, seconds=5.0), policy.due(steps=99, seconds=5.0)
    (True, False)
    >>> Checkpointing(every_minutes=10).due(steps=1, seconds=601.0)
    True
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import jax

from fnn.files import WriteError, temporary_file

__all__ = ["Checkpointing", "BackgroundWriter", "StopSignals", "Preempted", "PREEMPTED_STATUS",
           "step_checkpoints"]

PREEMPTED_STATUS = 75  # EX_TEMPFAIL: stopped on request; run again with --resume


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after writing ``latest``; the message says how to resume."""


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Write ``latest`` inside epochs: every ``every_steps`` steps and/or ``every_minutes``.

    Attributes:
        every_steps: steps between checkpoints (``None``: not by steps).
        every_minutes: minutes between checkpoints (``None``: not by time).
        keep: how many ``step-<N>.safetensors`` to keep (the newest is also ``latest``).
        chunk: in ``"epoch"`` mode, steps per compiled scan (where a signal or a checkpoint
            can stop it); default ``every_steps``, else 100.
    """

    every_steps: int | None = None
    every_minutes: float | None = None
    keep: int = 1
    chunk: int | None = None

    def __post_init__(self):
        for name in ("every_steps", "chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"training.checkpoint.{name}: must be an int >= 1 (or null), "
                                 f"got {value!r}")
        if self.every_minutes is not None and not self.every_minutes > 0:
            raise ValueError(f"training.checkpoint.every_minutes: must be > 0 (or null), got "
                             f"{self.every_minutes!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"training.checkpoint.keep: must be an int >= 1, got {self.keep!r}")

    def due(self, steps: int, seconds: float) -> bool:
        """Whether a checkpoint is due ``steps`` steps and ``seconds`` after the last one."""
        return ((self.every_steps is not None and steps >= self.every_steps)
                or (self.every_minutes is not None and seconds >= 60 * self.every_minutes))

    @property
    def scan_chunk(self) -> int:
        """Steps per compiled scan in ``"epoch"`` mode."""
        return self.chunk or self.every_steps or 100


def step_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``step-<N>.safetensors`` files of a checkpoints folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob("step-*.safetensors"):
        number = p.name[len("step-"):-len(".safetensors")]
        if number.isdigit():
            found.append((int(number), p))
    return [p for _, p in sorted(found)]


class BackgroundWriter:
    """Writes step checkpoints in a thread, at most one in flight.

    Args:
        save: ``save(path, host_train_state, progress)`` -- writes one checkpoint file
            (atomically, e.g. :meth:`fnn.train.run_folder.RunFolder.save_to`).
        folder: the checkpoints folder.
        keep: how many ``step-<N>`` files to keep.
    """

    def __init__(self, save: Callable[[Path, Any, dict], None], folder: str | os.PathLike,
                 keep: int = 1):
        self.save, self.folder, self.keep = save, Path(folder), keep
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def write(self, train_state: Any, progress: dict, step: int, *, wait: bool = False) -> None:
        """Copy ``train_state`` to the host, then write it in the background (``wait``: now)."""
        self.wait()
        host = jax.device_get(train_state)  # before the next step reuses (donates) the buffers
        self.thread = threading.Thread(target=self._write, args=(host, progress, step),
                                       name="fnn-checkpoint", daemon=False)
        self.thread.start()
        if wait:
            self.wait()

    def _write(self, host: Any, progress: dict, step: int) -> None:
        try:
            path = self.folder / f"step-{step}.safetensors"
            self.save(path, host, progress)
            _replace_with_link(path, self.folder / "latest.safetensors")
            for old in step_checkpoints(self.folder)[:-self.keep]:
                old.unlink(missing_ok=True)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by wait()
            self.error = e

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _replace_with_link(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source``, atomically (a hard link renamed into place;
    a copy where the file system has no hard links)."""
    fd, tmp = temporary_file(target.parent, target.name, ".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            from fnn.files import atomic_write
            atomic_write(target, source.read_bytes())
            return
        os.replace(tmp, target)
    except OSError as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(e.errno, f"cannot write {target}: {e.strerror or e}") from e


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGTERM and SIGINT ask to stop.

    The first signal sets :attr:`received` (the loop stops after the current step or chunk and
    writes ``latest``); a second ends the process at once with the signal's default action.
    Outside the main thread nothing is installed. The previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

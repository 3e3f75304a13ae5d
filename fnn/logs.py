"""A run's JSON-lines logs (``metrics.jsonl``, ``diagnostics.jsonl``): appended, checked, trimmed.

A record is one JSON object on one line with an integer ``"step"`` (the training step it was
logged at). The loop appends a line per record and flushes it (:func:`append_record`), so the
cost of a record does not grow with the length of the run. A kill can leave only the last line
torn (it lacks its newline); a resumed run drops it and cuts the records logged after the
checkpoint it resumes from, rewriting the file once, atomically (:func:`trim_records`). Any
other line that is not a record means the file was edited or damaged: :func:`read_records`
refuses it in one line naming the file and line, and :func:`check_logs` runs that check on a
run folder's logs before a resume touches anything.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> for step in (10, 20, 30):
    ...     append_record(path, {"step": step, "loss": 1.0 / step})
    >>> with open(path, "a") as f:                     # a kill in the middle of a line
    ...     _ = f.write('{"step": 40, "lo')
    >>> [r["step"] for r in read_records(path)]        # the torn line is not a record
    [10, 20, 30]
    >>> [r["step"] for r in trim_records(path, last_step=20)]   # resuming from step 20
    [10, 20]
    >>> path.read_text().count("\\n")
    2
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from fnn.files import WriteError, atomic_write

__all__ = ["LogError", "LOGS", "append_record", "read_records", "trim_records", "check_logs"]

LOGS = ("metrics.jsonl", "diagnostics.jsonl")  # the JSON-lines logs of a run folder


class LogError(ValueError):
    """A log line that is not a record (an edited or damaged file); names the file and line."""


def _line(record: Mapping[str, Any]) -> str:
    """Strict JSON on one line: NaN and +-Inf written as null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` to ``path`` as one line, written in one call and flushed.

    Raises:
        WriteError: the file cannot be written (disk full, no permission); names the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(_line(record))
            f.flush()
    except OSError as e:
        raise WriteError(e.errno, f"cannot append to {path}: {e.strerror or e}") from e


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``path`` (none if it is missing), without a torn last line.

    Raises:
        LogError: a line other than a torn last one is not a JSON object with an integer
            ``step``: ``<path>: line 7: not a log record (...); ...``.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    lines.pop()  # after the last newline: "" or a line torn by a kill
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or isinstance(record.get("step"), bool) \
                    or not isinstance(record.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as e:
            raise LogError(f"{path}: line {number}: not a log record ({e}); fnn only appends "
                           f"whole lines, so the file was edited or damaged: restore it, or "
                           f"delete line {number} and what follows") from None
        records.append(record)
    return records


def trim_records(path: str | os.PathLike, last_step: int) -> list[dict[str, Any]]:
    """Keep the records of ``path`` up to ``last_step`` (a resumed checkpoint's step); returns them.

    The file is rewritten once, atomically, only if it changes (a torn last line, or records
    logged after that checkpoint).
    """
    path = Path(path)
    if not path.exists():
        return []
    records = read_records(path)
    kept = [r for r in records if r["step"] <= last_step]
    text = "".join(_line(r) for r in kept)
    if text.encode() != path.read_bytes():
        atomic_write(path, text.encode())
    return kept


def check_logs(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder whose logs (:data:`LOGS`) hold a damaged line; reads, writes nothing.

    Raises:
        LogError: naming the file and line.
    """
    for name in LOGS:
        read_records(Path(run_dir) / name)

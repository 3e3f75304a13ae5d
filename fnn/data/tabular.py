"""CSV tables as arrays, and feature standardisation fitted on the training split.

* ``load_csv(path, label_column=...)``: float32 features and labels (integer class ids, or
  float32 regression targets) as a ``Table``, which unpacks as ``x, y``.
* ``Standardizer.fit(x_train)``: per-feature mean and std of the training split only, then
  ``transform`` any split with them.

Example:
    >>> import os, tempfile
    >>> from fnn.data import holdout
    >>> path = os.path.join(tempfile.mkdtemp(), "iris.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("sepal_length,sepal_width,species\\n5.1,3.5,setosa\\n7.0,3.2,versicolor\\n"
    ...                 "6.3,3.3,virginica\\n4.9,3.0,setosa\\n")
    >>> x, y = load_csv(path, label_column="species")
    >>> x.shape, y
    ((4, 2), array([0, 1, 2, 0], dtype=int32))
    >>> train_idx, val_idx = holdout(len(x), 1, seed=0)
    >>> scaler = Standardizer.fit(x[train_idx])
    >>> x_train, x_val = scaler.transform(x[train_idx]), scaler.transform(x[val_idx])
    >>> np.allclose(x_train.mean(0), 0, atol=1e-6)
    True
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from fnn.data.checks import MAX_TEXT_DATA_BYTES, DataError, check_data_file

__all__ = ["load_csv", "Table", "Standardizer"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class _XY(NamedTuple):
    x: np.ndarray
    y: np.ndarray


class Table(_XY):
    """A CSV file as arrays: a pair ``(x, y)`` that also names its columns and classes.

    Attributes:
        x: ``float32 (N, F)`` features.
        y: ``int32 (N,)`` class ids, or ``float32 (N,)`` regression targets.
        feature_names: the F feature column names (header names, or ``"col<i>"``).
        classes: for string labels, the class name of each id (sorted, so id 0 is the
            alphabetically first); ``None`` for numeric labels.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "iris.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("sepal_length,sepal_width,species\\n5.1,3.5,setosa\\n7.0,3.2,versicolor\\n")
        >>> t = load_csv(path, label_column="species")
        >>> t
        Table(x=float32(2, 2), y=int32(2,), feature_names=('sepal_length', 'sepal_width'), classes=('setosa', 'versicolor'))
        >>> x, y = t                       # unpacks like a pair
        >>> t.classes[y[0]]
        'setosa'
    """

    feature_names: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None

    def __new__(cls, x: np.ndarray, y: np.ndarray, feature_names: Sequence[str] = (),
                classes: Sequence[str] | None = None) -> "Table":
        self = super().__new__(cls, x, y)
        self.feature_names = tuple(feature_names)
        self.classes = tuple(classes) if classes is not None else None
        return self

    def __repr__(self) -> str:
        return (f"Table(x={self.x.dtype}{self.x.shape}, y={self.y.dtype}{self.y.shape}, "
                f"feature_names={self.feature_names}, classes={self.classes})")


def load_csv(path: str | os.PathLike, *, label_column: int | str,
             feature_columns: Sequence[int | str] | None = None, delimiter: str = ",",
             header: bool = True) -> Table:
    """Read a CSV table of numeric features and one label column.

    Labels: if every label is an integer (``"3"``, ``"-1"``, ``"2.0"``), ``y`` is those
    integers as ``int32`` (class ids, not renumbered); else if every label is a number, ``y``
    is ``float32`` (a regression target); else labels are names, mapped to ids ``0..K-1`` in
    sorted order, and ``classes`` gives the name of each id.

    Args:
        label_column: the label's column, by index or (with ``header``) by name.
        feature_columns: feature columns by index or name; ``None``: every other column.
        delimiter: the field separator.
        header: the first row holds column names.

    Returns:
        ``Table(x float32 (N, F), y (N,))`` with ``.feature_names`` and ``.classes``.

    Raises:
        DataError: (a ``ValueError``) an empty file, only a header, a missing label column, a
            ragged row, a missing value, a cell that is not a number, NaN or infinity in a
            feature or a numeric label, a file that is not UTF-8 text; the message names the
            file and, where it applies, the line (1-based, as an editor shows it) and column.

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "houses.csv"), "w") as f:
        ...     _ = f.write("rooms,area,price\\n3,70,250000\\n4,95,320000.5\\n")
        >>> x, y = load_csv(os.path.join(folder, "houses.csv"), label_column="price")
        >>> x, y                                                      # y float32
        (array([[ 3., 70.],
               [ 4., 95.]], dtype=float32), array([250000. , 320000.5], dtype=float32))
        >>> with open(os.path.join(folder, "iris.csv"), "w") as f:
        ...     _ = f.write("5.1,3.5,setosa\\n7.0,3.2,versicolor\\n")
        >>> t = load_csv(os.path.join(folder, "iris.csv"), label_column=-1, header=False)
        >>> t.y, t.classes, t.feature_names                           # t.y int32, t.classes
        (array([0, 1], dtype=int32), ('setosa', 'versicolor'), ('col0', 'col1'))
    """
    path = check_data_file(path, MAX_TEXT_DATA_BYTES)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=delimiter)
            rows = []  # (line number, fields); blank lines are skipped but still counted
            for row in reader:
                if row:
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if header:
        if not rows:
            raise DataError(f"{path}: empty file, expected a header row")
        names = [n.strip() for n in rows[0][1]]
        rows = rows[1:]
    else:
        names = [f"col{i}" for i in range(len(rows[0][1]))] if rows else []
    if not rows:
        raise DataError(f"{path}: no data rows" + (" (only a header)" if header else ""))
    width = len(names)
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} fields, expected {width} "
                            "(a ragged row)")

    label_index = _column_index(label_column, names, header, path)
    if feature_columns is None:
        feature_index = [i for i in range(width) if i != label_index]
    else:
        feature_index = [_column_index(c, names, header, path) for c in feature_columns]
    if label_index in feature_index:
        raise DataError(f"{path}: the label column {names[label_index]!r} is also a feature")
    if not feature_index:
        raise DataError(f"{path}: no feature columns")

    x = np.empty((len(rows), len(feature_index)), np.float32)
    for i, (line, row) in enumerate(rows):
        for j, col in enumerate(feature_index):
            cell = row[col].strip()
            if not cell:
                raise DataError(f"{path}, line {line}, column {names[col]!r}: missing value")
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {names[col]!r}: "
                                f"{row[col]!r} is not a number") from None
            if not abs(value) <= _FLOAT32_MAX:  # NaN, infinite, or beyond float32
                raise DataError(f"{path}, line {line}, column {names[col]!r}: {row[col]!r} is not "
                                "a finite number (float32); remove or impute it")
            x[i, j] = value
    labels = [row[label_index].strip() for _, row in rows]
    for (line, _), label in zip(rows, labels):
        if not label:
            raise DataError(f"{path}, line {line}, column {names[label_index]!r}: missing label")
    y, classes = _labels(labels)
    if classes is None and not np.all(np.isfinite(y)):
        i = int(np.argmax(~np.isfinite(y)))
        raise DataError(f"{path}, line {rows[i][0]}, column {names[label_index]!r}: "
                        f"{labels[i]!r} is not a finite label")
    return Table(x, y, tuple(names[i] for i in feature_index), classes)


def _column_index(column: int | str, names: list[str], header: bool, path: Path) -> int:
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        index = int(column)
        if not -len(names) <= index < len(names):
            raise DataError(f"{path}: column {index} out of range for {len(names)} columns")
        return index % len(names)
    if not header:
        raise DataError(f"{path}: column {column!r} by name needs header=True")
    if column not in names:
        raise DataError(f"{path}: no column named {column!r}; columns are {names}")
    return names.index(column)


def _labels(values: list[str]) -> tuple[np.ndarray, tuple[str, ...] | None]:
    try:
        numbers = np.array([float(v) for v in values], np.float64)
    except ValueError:
        classes = tuple(sorted(set(values)))
        ids = {name: i for i, name in enumerate(classes)}
        return np.array([ids[v] for v in values], np.int32), classes
    if np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)):
        return numbers.astype(np.int32), None
    return numbers.astype(np.float32), None


class Standardizer(NamedTuple):
    """Per-feature standardisation ``(x - mean) / std``, fitted on the training split only.

    Attributes:
        mean: ``float32 (F,)`` (or the trailing shape of the fitted data).
        std: ``float32 (F,)``; a feature with zero spread gets std 1 (it maps to 0, not NaN).

    Example:
        >>> x_train = np.array([[1.0, 10.0], [3.0, 10.0]], np.float32)
        >>> original_x_test = np.array([[2.0, 11.0]], np.float32)
        >>> scaler = Standardizer.fit(x_train)        # statistics of x_train only
        >>> scaler
        Standardizer(mean=array([ 2., 10.], dtype=float32), std=array([1., 1.], dtype=float32))
        >>> x_train, x_test = scaler.transform(x_train), scaler.transform(original_x_test)
        >>> x_test                                    # the constant feature: std 1, not NaN
        array([[0., 1.]], dtype=float32)
        >>> np.allclose(scaler.inverse_transform(x_test), original_x_test, atol=1e-5)
        True
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any) -> "Standardizer":
        """Mean and std over the first (example) axis of ``x (N, ...)``, computed in float64."""
        x = np.asarray(x, np.float64)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit: needs at least one example, got shape {x.shape}")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, x: Any) -> Any:
        """``(x - mean) / std`` for ``x (N, ...)`` (numpy or jax arrays)."""
        return (x - self.mean) / self.std

    def inverse_transform(self, x: Any) -> Any:
        """``x * std + mean``: back to the original units."""
        return x * self.std + self.mean

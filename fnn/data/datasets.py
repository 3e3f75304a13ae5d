"""MNIST and Fashion-MNIST: found on disk or downloaded, checked, returned as uint8 arrays.

``load_mnist()`` and ``load_fashion_mnist()`` return
``{"train": (images, labels), "test": (images, labels)}`` with images ``uint8 (N, 28, 28)``
and labels ``uint8 (N,)``; N is 60000 for train and 10000 for test.

Where the four files are looked for, in order (the first folder holding all four wins; each
file may be plain or gzipped, ``name`` or ``name.gz``):

1. ``data_dir``, when given;
2. ``$FNN_DATA_DIR`` and ``$FNN_DATA_DIR/mnist`` (MNIST), or ``$FNN_DATA_DIR/fashion_mnist``
   (Fashion-MNIST);
3. the per-user cache: ``$XDG_CACHE_HOME/fnn/<folder>``, by default ``~/.cache/fnn/<folder>``,
   with ``<folder>`` ``mnist`` or ``fashion_mnist``;
4. else (with ``download=True``) the missing files are downloaded, into ``data_dir`` if given,
   else into the cache, and loaded from there.

Fashion-MNIST is never read from ``$FNN_DATA_DIR`` itself: its files have the same names as
MNIST's, and ``$FNN_DATA_DIR`` commonly points at the MNIST folder.

Checks: every file's IDX header must give the expected shape. MNIST's published sha256
digests are of the uncompressed content, so they are checked for local files and downloads
alike. Fashion-MNIST's published md5 digests are of the ``.gz`` files as served, so they are
checked on download; local Fashion-MNIST files are checked by header and record count.

Example:
    >>> data = load_mnist()
    >>> x_train, y_train = data["train"]
    >>> x_train.shape, x_train.dtype, y_train.shape
    ((60000, 28, 28), dtype('uint8'), (60000,))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fnn.data.checks import check_labels
from fnn.data.download import Checksum, ChecksumError, DownloadError, fetch, user_cache_dir
from fnn.data.idx import IdxFormatError, parse_idx, read_raw
from fnn.files import clean_temporary_files

__all__ = [
    "DatasetNotFoundError",
    "IdxFile",
    "IdxDatasetSpec",
    "MNIST",
    "FASHION_MNIST",
    "load_mnist",
    "load_fashion_mnist",
    "load_idx_dataset",
    "search_dirs",
    "stand_in",
]

ENV_VAR = "FNN_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """A data set found in none of the searched folders and not downloadable (offline, or
    ``download=False``). The message lists the files needed and where to put them."""


class IdxFile(NamedTuple):
    """One file of an IDX data set: its ``name`` (without ``.gz``), the ``shape`` its header
    must give, and the ``checksum`` of the file as downloaded (``None``: header check only)."""

    name: str
    shape: tuple[int, ...]
    checksum: Checksum | None = None


class IdxDatasetSpec(NamedTuple):
    """Where to find and how to check an MNIST-style data set.

    Attributes:
        name: shown in messages, e.g. ``"MNIST"``.
        folder: subfolder under ``$FNN_DATA_DIR`` and the per-user cache (``"mnist"``).
        search_env_root: also look in ``$FNN_DATA_DIR`` itself (not only its ``folder``).
        mirrors: base URLs tried in order; a file's URL is ``mirror + name + ".gz"``.
        splits: ``{"train": (images IdxFile, labels IdxFile), "test": (...)}``.
        num_classes: labels must lie in ``[0, num_classes)``.
    """

    name: str
    folder: str
    search_env_root: bool
    mirrors: tuple[str, ...]
    splits: dict[str, tuple[IdxFile, IdxFile]]
    num_classes: int = 10

    @property
    def files(self) -> list[IdxFile]:
        """All files of the data set, in split order."""
        return [f for pair in self.splits.values() for f in pair]


def _sha256(digest: str) -> Checksum:
    return Checksum("sha256", digest, of="content")


def _md5_gz(digest: str) -> Checksum:
    return Checksum("md5", digest, of="file")


MNIST = IdxDatasetSpec(
    name="MNIST",
    folder="mnist",
    search_env_root=True,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    splits={
        "train": (
            IdxFile("train-images-idx3-ubyte", (60000, 28, 28), _sha256(
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db")),
            IdxFile("train-labels-idx1-ubyte", (60000,), _sha256(
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5")),
        ),
        "test": (
            IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28), _sha256(
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7")),
            IdxFile("t10k-labels-idx1-ubyte", (10000,), _sha256(
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")),
        ),
    },
)

# md5 digests of the .gz files, as published in the Fashion-MNIST README.
FASHION_MNIST = IdxDatasetSpec(
    name="Fashion-MNIST",
    folder="fashion_mnist",
    search_env_root=False,
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    splits={
        "train": (
            IdxFile("train-images-idx3-ubyte", (60000, 28, 28),
                    _md5_gz("8d4fb7e6c68d591d4c3dfef9ec88bf0d")),
            IdxFile("train-labels-idx1-ubyte", (60000,),
                    _md5_gz("25c81989df183df01b3e8a0aad5dffbe")),
        ),
        "test": (
            IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                    _md5_gz("bef4ecab320f06d8554ea6380940ec79")),
            IdxFile("t10k-labels-idx1-ubyte", (10000,),
                    _md5_gz("bb300cfdad3c16e7a12a480ee83cd310")),
        ),
    },
)


def load_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True,
               progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The MNIST digits: ``{"train": (images, labels), "test": (images, labels)}``.

    Shapes: images ``uint8 (N, 28, 28)`` with values 0..255, labels ``uint8 (N,)`` in 0..9;
    N = 60000 (train), 10000 (test). See the module docstring for where files are looked for.

    Args:
        data_dir: a folder to look in first (and to download into, if it comes to that).
        download: fetch missing files from the public mirrors (sha256-checked).
        progress: show a progress bar while downloading.

    Raises:
        DatasetNotFoundError: the files are nowhere and could not be downloaded.
        ChecksumError, IdxFormatError: a file is present but wrong or corrupt (both are
            ``fnn.data.DataError``; the message names the file).
        DataError: a label outside 0..9 (naming the labels file, the values and their count).

    Example:
        >>> x, y = load_mnist()["test"]
        >>> x = x.reshape(-1, 784).astype("float32") / 255.0
        >>> x.shape, float(x.max()), y[:5]
        ((10000, 784), 1.0, array([7, 2, 1, 0, 4], dtype=uint8))
    """
    return load_idx_dataset(MNIST, data_dir, download=download, progress=progress)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                       progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Zalando's Fashion-MNIST, in the same form as ``load_mnist``.

    Shapes: images ``uint8 (N, 28, 28)``, labels ``uint8 (N,)`` in 0..9 (T-shirt/top, Trouser,
    Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot); N = 60000 / 10000.
    Looked for in ``data_dir``, ``$FNN_DATA_DIR/fashion_mnist``, then the per-user cache
    (never in ``$FNN_DATA_DIR`` itself, which usually holds MNIST's same-named files).

    Example:
        >>> import shutil, tempfile
        >>> from fnn.data import write_idx
        >>> folder = tempfile.mkdtemp()              # a folder with the 4 files (blank here)
        >>> for f in FASHION_MNIST.files:
        ...     _ = write_idx(f"{folder}/{f.name}", np.zeros(f.shape, np.uint8))
        >>> x, y = load_fashion_mnist(folder)["test"]
        >>> x.shape, x.dtype, y.shape
        ((10000, 28, 28), dtype('uint8'), (10000,))
        >>> shutil.rmtree(folder)
    """
    return load_idx_dataset(FASHION_MNIST, data_dir, download=download, progress=progress)


def stand_in(spec: IdxDatasetSpec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Arrays with the shapes and dtypes of ``spec``'s splits, as :func:`load_idx_dataset` returns
    them: zero images, and labels that go through every class in turn. For checks that need a
    data set's shapes and classes but not its values (``fnn validate`` where the files are not on
    this machine), without reading or downloading anything.

    Example:
        >>> images, labels = stand_in(MNIST)["test"]
        >>> images.shape, images.dtype, labels[:12].tolist()
        ((10000, 28, 28), dtype('uint8'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    """
    return {split: (np.zeros(images.shape, np.uint8),
                    (np.arange(labels.shape[0]) % spec.num_classes).astype(np.uint8))
            for split, (images, labels) in spec.splits.items()}


def search_dirs(spec: IdxDatasetSpec, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for ``spec``'s files, in order (see the module docstring).

    Example:
        >>> search_dirs(MNIST)     # [$FNN_DATA_DIR, $FNN_DATA_DIR/mnist, ~/.cache/fnn/mnist]
        [...PosixPath('.../fnn/mnist')]
        >>> search_dirs(FASHION_MNIST, "/data/fashion")[0]
        PosixPath('/data/fashion')
    """
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if spec.search_env_root:
            dirs.append(root)
        dirs.append(root / spec.folder)
    dirs.append(user_cache_dir(spec.folder))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(spec: IdxDatasetSpec, data_dir: str | os.PathLike | None = None, *,
                     download: bool = True, progress: bool = True
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load an MNIST-style data set described by ``spec``: find, else download, then check.

    Returns ``{split: (images, labels)}`` for each split of ``spec``, arrays as in the files.

    Example:
        >>> import tempfile
        >>> from fnn.data import write_idx
        >>> tiny = IdxDatasetSpec("Tiny", "tiny", search_env_root=False, mirrors=(),
        ...                       splits={"train": (IdxFile("images", (3, 2, 2)),
        ...                                         IdxFile("labels", (3,)))})
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_idx(f"{folder}/images", np.zeros((3, 2, 2), np.uint8))
        >>> _ = write_idx(f"{folder}/labels.gz", np.array([0, 1, 2], np.uint8))
        >>> x, y = load_idx_dataset(tiny, folder, download=False)["train"]
        >>> x.shape, y
        ((3, 2, 2), array([0, 1, 2], dtype=uint8))
        >>> load_idx_dataset(tiny, tempfile.mkdtemp(), download=False)
        Traceback (most recent call last):
        fnn.data.datasets.DatasetNotFoundError: Tiny not found. It needs these 2 files, all in one folder: ...
    """
    dirs = search_dirs(spec, data_dir)
    folder = next((d for d in dirs if all(_find(d, f.name) for f in spec.files)), None)
    if folder is None:
        target = dirs[0] if data_dir is not None else user_cache_dir(spec.folder)
        if not download:
            raise DatasetNotFoundError(_not_found_message(spec, dirs, target, None))
        clean_temporary_files(target)  # partial files of a download that was killed
        try:
            for f in spec.files:
                if _find(target, f.name) is None:
                    _download(spec, f, target, progress=progress)
        except DownloadError as e:
            raise DatasetNotFoundError(_not_found_message(spec, dirs, target, e)) from None
        folder = target
    out = {}
    for split, (images_file, labels_file) in spec.splits.items():
        images = _load_file(_find(folder, images_file.name), images_file)
        labels = _load_file(_find(folder, labels_file.name), labels_file)
        check_labels(labels, spec.num_classes, str(_find(folder, labels_file.name)))
        out[split] = (images, labels)
    return out


def _download(spec: IdxDatasetSpec, f: IdxFile, target: Path, *, progress: bool) -> Path:
    def validate(path: Path) -> None:
        _load_file(path, f, check_digest=False)

    urls = [f"{mirror}{f.name}.gz" for mirror in spec.mirrors]
    return fetch(urls, target / f"{f.name}.gz", checksum=f.checksum, validate=validate,
                 progress=progress)


def _load_file(path: Path, f: IdxFile, *, check_digest: bool = True) -> np.ndarray:
    raw = read_raw(path)
    c = f.checksum
    if check_digest and c is not None and c.of == "content":
        got = hashlib.new(c.algorithm, raw).hexdigest()
        if got != c.hexdigest.lower():
            raise ChecksumError(
                f"{path}: {c.algorithm} of the uncompressed content is {got}, expected "
                f"{c.hexdigest}; the file is damaged or is not {f.name}: delete it to download "
                "it again")
    array = parse_idx(raw, source=str(path))
    if array.shape != tuple(f.shape) or array.dtype != np.uint8:
        raise IdxFormatError(f"{path}: expected uint8 data of shape {tuple(f.shape)} for "
                             f"{f.name}, got {array.dtype} of shape {array.shape}")
    return array


def _not_found_message(spec: IdxDatasetSpec, dirs: list[Path], target: Path,
                       error: DownloadError | None) -> str:
    names = "\n".join(f"  {f.name}  (or {f.name}.gz)" for f in spec.files)
    searched = []
    for d in dirs:
        missing = [f.name for f in spec.files if _find(d, f.name) is None]
        if len(missing) == len(spec.files):
            state = "missing all"
        else:
            state = f"missing {', '.join(missing)}" if missing else "has all"
        searched.append(f"  {d}  ({state})")
    env_dir = f"$FNN_DATA_DIR/{spec.folder}" if not spec.search_env_root else "$FNN_DATA_DIR"
    lines = [
        f"{spec.name} not found. It needs these {len(spec.files)} files, all in one folder:",
        names,
        "Searched:",
        *searched,
        f"Put the files in one of these folders, pass data_dir=..., or point {ENV_VAR} at a "
        f"folder (files go in {env_dir}).",
    ]
    if error is None:
        lines.append(f"download=True would fetch them into {target} from "
                     f"{', '.join(spec.mirrors)}.")
    else:
        lines.append(f"Downloading into {target} failed (offline?):\n{error}")
    return "\n".join(lines)

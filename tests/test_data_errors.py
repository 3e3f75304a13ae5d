"""Bad data files and arrays: each ends in ONE DataError line naming the file (line, row, column).

The table below builds each bad file in tmp_path, calls the real loader, and checks the
exception type and the message fragments. Also: check_finite, check_labels, and the NaN that
softmax cross-entropy returns for an out-of-range label under jit.
"""

import gzip
import hashlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import losses
from fnn.data import (ChecksumError, DataError, IdxFormatError, check_finite, check_labels,
                      load_arrays, load_csv, read_idx)
from fnn.data.datasets import IdxDatasetSpec, IdxFile, load_idx_dataset
from fnn.data.download import Checksum


def _idx(array: np.ndarray) -> bytes:
    """IDX bytes written here, independently of fnn.data.idx: magic, big-endian dims, data."""
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    dt = array.dtype.newbyteorder(">")
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(dt).tobytes())


LABELS = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.uint8)


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --------------------------------------------------------------------------- IDX and gzip

def _gz_truncated(tmp_path):
    data = gzip.compress(_idx(np.arange(2000, dtype=np.int32) % 251), mtime=0)
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte.gz", data[: len(data) // 2]))


def _gz_corrupt(tmp_path):
    data = bytearray(gzip.compress(_idx(np.arange(2000, dtype=np.int32) % 251), mtime=0))
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: a zlib error or a CRC mismatch
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte.gz", bytes(data)))


def _gz_not_gzip(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte.gz", _idx(LABELS)))


def _idx_bad_magic(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte", b"\x1f\x8b\x08\x01" + bytes(12)))


def _idx_bad_dtype_code(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte", b"\x00\x00\x07\x01" + bytes(12)))


def _idx_truncated_data(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte", _idx(LABELS)[:-3]))


def _idx_truncated_header(tmp_path):
    return lambda: read_idx(_write(tmp_path, "img-idx3-ubyte", _idx(np.zeros((2, 3, 3), np.uint8))[:9]))


def _idx_trailing_bytes(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte", _idx(LABELS) + b"\x00\x00"))


def _idx_empty(tmp_path):
    return lambda: read_idx(_write(tmp_path, "lab-idx1-ubyte", b""))


def _dataset(tmp_path, labels=LABELS, label_digest=None):
    images = np.zeros((len(labels), 2, 2), np.uint8)
    _write(tmp_path, "img-idx3-ubyte", _idx(images))
    _write(tmp_path, "lab-idx1-ubyte", _idx(labels))
    digest = label_digest or hashlib.sha256(_idx(labels)).hexdigest()
    spec = IdxDatasetSpec("Tiny", "tiny", False, (), {"train": (
        IdxFile("img-idx3-ubyte", images.shape),
        IdxFile("lab-idx1-ubyte", labels.shape, Checksum("sha256", digest, of="content")))})
    return lambda: load_idx_dataset(spec, tmp_path, download=False)


def _idx_checksum_mismatch(tmp_path):
    return _dataset(tmp_path, label_digest="0" * 64)


def _idx_label_out_of_range(tmp_path):
    return _dataset(tmp_path, labels=np.array([3, 10, 4, 12, 10], np.uint8))


# --------------------------------------------------------------------------- CSV

def _csv(text, **kw):
    def build(tmp_path):
        path = _write(tmp_path, "table.csv", text)
        return lambda: load_csv(path, **{"label_column": "label", **kw})
    return build


# --------------------------------------------------------------------------- npz / npy

def _npz(**arrays):
    def build(tmp_path):
        path = tmp_path / "data.npz"
        np.savez(path, **arrays)
        return lambda: load_arrays(path)
    return build


def _npz_truncated(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((50, 3), np.float32), y=np.zeros(50, np.int32))
    path.write_bytes(path.read_bytes()[:300])
    return lambda: load_arrays(path)


def _npz_is_npy(tmp_path):
    path = tmp_path / "data.npz"
    with open(path, "wb") as f:
        np.save(f, np.ones((4, 2), np.float32))
    return lambda: load_arrays(path)


def _npz_is_text(tmp_path):
    return lambda: load_arrays(_write(tmp_path, "data.npz", "x,y\n1,2\n"))


def _npy_nan(tmp_path):
    path = tmp_path / "features.npy"
    x = np.zeros((6, 2, 2), np.float32)
    x[4, 1, 0] = np.nan
    np.save(path, x)
    return lambda: load_arrays(path, mmap=True)


def _npy_truncated(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.ones(100, np.float32))
    path.write_bytes(path.read_bytes()[:200])
    return lambda: load_arrays(path)


X4 = np.arange(8, dtype=np.float32).reshape(4, 2)
X4_NAN = X4.copy()
X4_NAN[2, 1] = np.nan
X4_INF = X4.copy()
X4_INF[3, 0] = -np.inf
Y4 = np.array([0, 1, 0, 1])

CASES = [
    # name, build(tmp_path) -> call, exception, fragments of the message
    ("gzip truncated", _gz_truncated, IdxFormatError,
     ["lab-idx1-ubyte.gz", "corrupt or truncated gzip"]),
    ("gzip corrupt", _gz_corrupt, IdxFormatError, ["lab-idx1-ubyte.gz", "corrupt or truncated gzip"]),
    ("gzip name, not gzip", _gz_not_gzip, IdxFormatError, ["lab-idx1-ubyte.gz", "gzip"]),
    ("IDX wrong magic", _idx_bad_magic, IdxFormatError, ["lab-idx1-ubyte", "bad magic number 1f8b0801"]),
    ("IDX unknown dtype code", _idx_bad_dtype_code, IdxFormatError, ["lab-idx1-ubyte", "bad magic"]),
    ("IDX truncated data", _idx_truncated_data, IdxFormatError,
     ["lab-idx1-ubyte", "truncated IDX file", "found 5 bytes"]),
    ("IDX truncated header", _idx_truncated_header, IdxFormatError,
     ["img-idx3-ubyte", "truncated IDX header"]),
    ("IDX trailing bytes", _idx_trailing_bytes, IdxFormatError, ["lab-idx1-ubyte", "2 bytes after"]),
    ("IDX empty", _idx_empty, IdxFormatError, ["lab-idx1-ubyte", "only 0 bytes"]),
    ("IDX checksum mismatch", _idx_checksum_mismatch, ChecksumError,
     ["lab-idx1-ubyte", "sha256", "expected 0000"]),
    ("IDX labels out of range", _idx_label_out_of_range, DataError,
     ["lab-idx1-ubyte", "3 labels outside [0, 10)", "values [10, 12]", "row 1"]),
    ("CSV missing value", _csv("a,b,label\n1,2,0\n3,,1\n"), DataError,
     ["table.csv, line 3, column 'b': missing value"]),
    ("CSV blank cell with spaces", _csv("a,b,label\n1,2,0\n  ,4,1\n"), DataError,
     ["table.csv, line 3, column 'a': missing value"]),
    ("CSV non-numeric cell", _csv("a,b,label\n1,2,0\n3,four,1\n"), DataError,
     ["table.csv, line 3, column 'b': 'four' is not a number"]),
    ("CSV line numbers count blank lines", _csv("a,b,label\n\n1,2,0\n\n3,x,1\n"), DataError,
     ["table.csv, line 5, column 'b'"]),
    ("CSV ragged row", _csv("a,b,label\n1,2,0\n3,4\n"), DataError,
     ["table.csv, line 3: 2 fields, expected 3"]),
    ("CSV long row", _csv("a,b,label\n1,2,0,9\n"), DataError,
     ["table.csv, line 2: 4 fields, expected 3"]),
    ("CSV only a header", _csv("a,b,label\n"), DataError, ["table.csv: no data rows (only a header)"]),
    ("CSV empty file", _csv(""), DataError, ["table.csv: empty file"]),
    ("CSV missing label column", _csv("a,b,class\n1,2,0\n", label_column="label"), DataError,
     ["table.csv: no column named 'label'", "['a', 'b', 'class']"]),
    ("CSV label index out of range", _csv("a,b\n1,2\n", label_column=5), DataError,
     ["table.csv: column 5 out of range"]),
    ("CSV missing label", _csv("a,b,label\n1,2,0\n3,4,\n"), DataError,
     ["table.csv, line 3, column 'label': missing label"]),
    ("CSV NaN feature", _csv("a,b,label\n1,2,0\n3,nan,1\n"), DataError,
     ["table.csv, line 3, column 'b': 'nan' is not a finite number"]),
    ("CSV infinite feature", _csv("a,b,label\n-inf,2,0\n"), DataError,
     ["table.csv, line 2, column 'a': '-inf' is not a finite number"]),
    ("CSV float32 overflow", _csv("a,b,label\n1,2,0\n1e39,2,0\n"), DataError,
     ["table.csv, line 3, column 'a': '1e39' is not a finite number (float32)"]),
    ("CSV NaN target", _csv("a,b,label\n1,2,0.5\n3,4,NaN\n"), DataError,
     ["table.csv, line 3, column 'label': 'NaN' is not a finite label"]),
    ("CSV not text", lambda tmp_path: (lambda: load_csv(
        _write(tmp_path, "table.csv", b"\x89PNG\r\n\x1a\n\xff\xfe"), label_column=0)),
     DataError, ["table.csv: not a UTF-8 text file"]),
    ("npz missing x", _npz(features=X4, y=Y4), DataError,
     ["data.npz: no array named 'x'", "['features', 'y']"]),
    ("npz missing y", _npz(x=X4, labels=Y4), DataError, ["data.npz: no array named 'y'"]),
    ("npz mismatched lengths", _npz(x=X4, y=Y4[:3]), DataError,
     ["data.npz: arrays must share their first (example) dim", "x: (4, 2), y: (3,)"]),
    ("npz scalar", _npz(x=np.float32(1), y=Y4), DataError, ["data.npz: arrays must share"]),
    ("npz NaN in x", _npz(x=X4_NAN, y=Y4), DataError,
     ["data.npz: x: 1 non-finite value (first: nan at row 2, column 1)"]),
    ("npz Inf in x", _npz(x=X4_INF, y=Y4), DataError,
     ["data.npz: x: 1 non-finite value (first: -inf at row 3, column 0)"]),
    ("npz NaN in float targets", _npz(x=X4, y=np.array([0.0, np.nan, np.nan, 1.0])), DataError,
     ["data.npz: y: 2 non-finite values (first: nan at row 1)"]),
    ("npz object array", _npz(x=np.array([{}, {}], object), y=Y4[:2]), DataError,
     ["data.npz: not a readable .npz archive"]),
    ("npz truncated", _npz_truncated, DataError, ["data.npz: not a readable .npz archive"]),
    ("npz holding one .npy", _npz_is_npy, DataError, ["data.npz: not an .npz archive"]),
    ("npz that is text", _npz_is_text, DataError, ["data.npz: not a readable .npz archive"]),
    ("npy NaN, memory-mapped", _npy_nan, DataError,
     ["features.npy: x: 1 non-finite value (first: nan at row 4, position (1, 0))"]),
    ("npy truncated", _npy_truncated, DataError, ["features.npy: not a readable .npy file"]),
]


@pytest.mark.parametrize("build, error, fragments", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_data_file_gives_one_clear_error(tmp_path, build, error, fragments):
    call = build(tmp_path)
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(tmp_path) in message, message  # the full path of the file
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_good_files_still_load(tmp_path):
    x, y = load_csv(_write(tmp_path, "t.csv", "a,b,label\n1,2,0\n\n3,4.5,1\n"), label_column="label")
    np.testing.assert_array_equal(x, [[1, 2], [3, 4.5]])
    np.testing.assert_array_equal(y, [0, 1])
    np.savez(tmp_path / "d.npz", x=X4, y=Y4)
    gx, gy = load_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(gx, X4)
    data = _dataset(tmp_path)()
    np.testing.assert_array_equal(data["train"][1], LABELS)


# --------------------------------------------------------------------------- the checks

def test_check_finite_names_where_count_and_first_position():
    x = np.zeros((5, 3), np.float32)
    check_finite(x, "ok")  # nothing to say
    check_finite(np.array([1, 2**31 - 1]), "integers are always finite")
    x[1, 2], x[3, 0], x[4, 1] = np.inf, np.nan, -np.inf
    with pytest.raises(DataError, match=r"^train split: 3 non-finite values \(first: inf at row "
                                        r"1, column 2\); remove or impute"):
        check_finite(x, "train split")
    with pytest.raises(DataError, match=r"fit: x: 1 non-finite value \(first: nan at row 0\)"):
        check_finite(jnp.array([jnp.nan, 1.0]), "fit: x")


def test_check_finite_reads_large_arrays_in_chunks(monkeypatch):
    import fnn.data.checks as checks
    monkeypatch.setattr(checks, "_CHUNK_BYTES", 64)  # 2 rows of 8 float32 per chunk
    x = np.zeros((9, 8), np.float32)
    x[7, 5] = np.nan
    x[8, 0] = np.inf
    with pytest.raises(DataError, match=r"2 non-finite values \(first: nan at row 7, column 5\)"):
        check_finite(x, "big")


def test_check_labels_names_bad_values_count_and_first_row():
    check_labels(np.array([0, 1, 2, 2]), 3, "ok")
    check_labels(np.array([0.5, 7.0]), 3, "float targets are not class ids")
    with pytest.raises(DataError) as info:
        check_labels(np.array([0, 5, 2, 7, 5, -1]), 3, "iris.csv")
    assert str(info.value) == ("iris.csv: 4 labels outside [0, 3) for a 3-class output: "
                               "values [-1, 5, 7] (first at row 1)")
    with pytest.raises(DataError, match=r"1 label outside \[0, 10\).*row 1, column 2"):
        check_labels(np.array([[0, 1, 2], [3, 4, 10]]), 10, "sequences")
    with pytest.raises(DataError, match=r"values \[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, \.\.\.\]"):
        check_labels(np.arange(40), 10, "many")
    with pytest.raises(ValueError, match="num_classes"):
        check_labels(np.array([0]), 0, "x")


@pytest.mark.parametrize("bad", [5, -1, 3])
@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.categorical_cross_entropy])
def test_cross_entropy_is_nan_for_out_of_range_labels_under_jit(loss, bad):
    scores = jnp.array([[1.0, 2.0, 0.5], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    if loss is losses.categorical_cross_entropy:
        scores = jax.nn.softmax(scores)
    labels = jnp.array([0, bad, 2])
    jitted = jax.jit(loss)
    assert np.isnan(float(jitted(scores, labels)))
    per_example = jax.jit(lambda s, y: loss(s, y, reduction="none"))(scores, labels)
    assert np.isnan(float(per_example[1])) and np.isfinite(np.asarray(per_example)[[0, 2]]).all()
    assert np.isnan(float(jax.jit(lambda s, y: loss(s, y, label_smoothing=0.1))(scores, labels)))
    grads = jax.jit(jax.grad(loss))(scores, labels)
    assert np.isnan(np.asarray(grads)).any()  # nothing can train on it
    with pytest.raises(ValueError, match=r"\[0, 3\)"):  # eagerly: refused outright
        loss(scores, labels)
    # in-range labels under jit: the usual value, -log softmax of the label's score
    good = jnp.array([0, 1, 2])
    z = np.array([[1.0, 2.0, 0.5], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(jitted(scores, good), -log_p[[0, 1, 2], [0, 1, 2]].mean(), rtol=1e-5)

"""Tests for fnn.data: IDX files, downloads, MNIST loading, array/CSV files, synthetic sets."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fnn.data import datasets as ds
from fnn.data import download as dl
from fnn.data.arrays import load_arrays
from fnn.data.checks import DataError
from fnn.data.datasets import (DatasetNotFoundError, IdxDatasetSpec, IdxFile, load_fashion_mnist,
                               load_idx_dataset, load_mnist)
from fnn.data.download import Checksum, ChecksumError, DownloadError, fetch
from fnn.data.idx import IdxFormatError, read_idx, write_idx
from fnn.data.synthetic import circles, noisy_regression, two_spirals, xor
from fnn.data.tabular import Standardizer, load_csv

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _real_mnist_dir() -> Path | None:
    """The MNIST files of this checkout's shared folder (or $FNN_DATA_DIR), if present."""
    candidates = [os.environ.get("FNN_DATA_DIR"),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and all((Path(c) / f"{n}.gz").is_file() for n in NAMES):
            return Path(c).resolve()
    return None


MNIST_DIR = _real_mnist_dir()
needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason="MNIST files not available")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the real user cache or the caller's FNN_DATA_DIR, or prints progress."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("FNN_DATA_DIR", raising=False)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file written from the spec, independently of fnn.data.idx."""
    big = array.astype(array.dtype.newbyteorder(">"))
    return (bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
            + big.tobytes())


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D),
                                        (np.float64, 0x0E)])
def test_read_idx_decodes_every_dtype(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 20).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a-idx3"
    path.write_bytes(idx_bytes(array, code))
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    write_idx(tmp_path / "b-idx3", array)
    assert (tmp_path / "b-idx3").read_bytes() == path.read_bytes()


def test_write_idx_writes_the_spec_bytes_and_gzip(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(tmp_path / "l-idx1", labels)
    assert (tmp_path / "l-idx1").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 5, 3, 1, 4, 1, 5])
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "i-idx3.gz", images)
    assert gzip.decompress((tmp_path / "i-idx3.gz").read_bytes()) == idx_bytes(images, 8)
    np.testing.assert_array_equal(read_idx(tmp_path / "i-idx3.gz"), images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i-idx3.gz", "l-idx1"]  # no temp left


@pytest.mark.parametrize("damage,message", [
    (lambda b: b"\x01\x02" + b[2:], "bad magic"),
    (lambda b: b[:-3], "truncated"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b + b"\x00\x00", "after the"),
    (lambda b: b[:2], "not an IDX file"),
])
def test_read_idx_names_the_corrupt_file(tmp_path, damage, message):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 8)
    path = tmp_path / "broken-idx2-ubyte"
    path.write_bytes(damage(good))
    with pytest.raises(IdxFormatError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 100) % 7, 8))
    path = tmp_path / "cut-idx2-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- fetch

def test_fetch_file_url_checks_sha256_and_renames(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    payload = bytes(range(256)) * 50
    src.write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    got = fetch([src.as_uri()], dest, checksum=Checksum("sha256",
                hashlib.sha256(payload).hexdigest()), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert os.listdir(dest.parent) == ["blob.bin"]


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"not the expected bytes")
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ChecksumError, match="blob.bin") as err:
        fetch([src.as_uri()], dest, checksum=Checksum("sha256", "0" * 64), progress=False)
    assert hashlib.sha256(b"not the expected bytes").hexdigest() in str(err.value)
    assert not dest.exists() and not dest.parent.exists()  # nor the folder fetch made for it


def test_fetch_checksum_of_gzip_content(tmp_path):
    content = b"hello idx" * 100
    src = tmp_path / "x.gz"
    src.write_bytes(gzip.compress(content))
    dest = tmp_path / "out" / "x.gz"
    fetch([src.as_uri()], dest, checksum=Checksum("sha256", hashlib.sha256(content).hexdigest(),
                                                  of="content"), progress=False)
    assert gzip.decompress(dest.read_bytes()) == content


def test_fetch_falls_back_to_the_next_mirror(tmp_path):
    good = tmp_path / "b" / "f.bin"
    good.parent.mkdir()
    good.write_bytes(b"payload")
    missing = tmp_path / "a" / "f.bin"
    dest = tmp_path / "out" / "f.bin"
    fetch([missing.as_uri(), good.as_uri()], dest,
          checksum=Checksum("md5", hashlib.md5(b"payload").hexdigest()), progress=False)
    assert dest.read_bytes() == b"payload"


def test_fetch_unreachable_raises_download_error(tmp_path):
    dest = tmp_path / "out" / "f.bin"
    urls = [(tmp_path / "nowhere" / "f.bin").as_uri(), (tmp_path / "nor-here" / "f.bin").as_uri()]
    with pytest.raises(DownloadError) as err:
        fetch(urls, dest, progress=False)
    assert [u for u, _ in err.value.attempts] == urls
    assert not dest.parent.exists()  # no file, and no empty folder left behind


class _CutResponse:
    """A response that announces more bytes than it sends (a dropped connection)."""

    def __init__(self, body: bytes, announced: int):
        self._chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
        self.headers = {"Content-Length": str(announced)}

    def read(self, n=-1):
        return self._chunks.pop(0) if self._chunks else b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetch_dropped_connection_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_open_url", lambda url, timeout: _CutResponse(b"x" * 40, 100))
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(DownloadError, match="40 of 100 bytes"):
        fetch(["https://mirror.invalid/f.bin"], dest, progress=False)
    assert not dest.parent.exists()


# --------------------------------------------------------------------------- IDX data sets

def _fake_spec(mirror_dir: Path, *, checksum_of: str = "content", corrupt_checksum: bool = False,
               seed: int = 0) -> tuple[IdxDatasetSpec, dict]:
    """A tiny MNIST-like data set written as .gz files into mirror_dir, and its spec."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (6, 4, 5), dtype=np.uint8),
                  rng.integers(0, 3, 6, dtype=np.uint8)),
        "test": (rng.integers(0, 256, (2, 4, 5), dtype=np.uint8),
                 rng.integers(0, 3, 2, dtype=np.uint8)),
    }
    mirror_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, (images, labels) in arrays.items():
        files = []
        for kind, array, code in (("images", images, 8), ("labels", labels, 8)):
            name = f"{split}-{kind}-idx{array.ndim}-ubyte"
            raw = idx_bytes(array, code)
            gz = gzip.compress(raw)
            (mirror_dir / f"{name}.gz").write_bytes(gz)
            if checksum_of == "content":
                c = Checksum("sha256", hashlib.sha256(raw).hexdigest(), of="content")
            else:
                c = Checksum("md5", hashlib.md5(gz).hexdigest(), of="file")
            if corrupt_checksum:
                c = c._replace(hexdigest="f" * len(c.hexdigest))
            files.append(IdxFile(name, array.shape, c))
        splits[split] = tuple(files)
    spec = IdxDatasetSpec("Fake", "fake", True, (mirror_dir.as_uri() + "/",), splits,
                          num_classes=3)
    return spec, arrays


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for split in want:
        for g, w in zip(got[split], want[split]):
            assert g.dtype == np.uint8
            np.testing.assert_array_equal(g, w)


def test_download_removes_partial_files_of_a_killed_download(tmp_path):
    spec, arrays = _fake_spec(tmp_path / "mirror")
    cache = tmp_path / "xdg-cache" / "fnn" / "fake"
    cache.mkdir(parents=True)
    partial = cache / f".{spec.files[0].name}.gz.a1b2c3d4.part.gz"  # fetch's temporary name
    partial.write_bytes(b"\x1f\x8b half a download")
    _assert_same(load_idx_dataset(spec, progress=False), arrays)
    assert sorted(os.listdir(cache)) == sorted(f"{f.name}.gz" for f in spec.files)


@pytest.mark.parametrize("checksum_of", ["content", "file"])
def test_download_into_cache_then_load_from_it(tmp_path, checksum_of):
    spec, arrays = _fake_spec(tmp_path / "mirror", checksum_of=checksum_of)
    _assert_same(load_idx_dataset(spec, progress=False), arrays)
    cache = tmp_path / "xdg-cache" / "fnn" / "fake"
    assert sorted(os.listdir(cache)) == sorted(f"{f.name}.gz" for f in spec.files)
    offline = spec._replace(mirrors=((tmp_path / "gone").as_uri() + "/",))
    _assert_same(load_idx_dataset(offline, download=False), arrays)  # found in the cache


def test_download_checksum_mismatch_raises_and_leaves_no_file(tmp_path):
    spec, _ = _fake_spec(tmp_path / "mirror", corrupt_checksum=True)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte"):
        load_idx_dataset(spec, progress=False)
    assert not (tmp_path / "xdg-cache").exists()  # a failed download leaves no empty folders


def test_download_into_explicit_data_dir(tmp_path):
    spec, arrays = _fake_spec(tmp_path / "mirror")
    target = tmp_path / "mine"
    _assert_same(load_idx_dataset(spec, target, progress=False), arrays)
    assert len(os.listdir(target)) == 4
    assert not (tmp_path / "xdg-cache").exists()


def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    spec_a, arrays_a = _fake_spec(tmp_path / "a", checksum_of="file", seed=1)
    spec_b, arrays_b = _fake_spec(tmp_path / "b", checksum_of="file", seed=2)
    spec = spec_a._replace(mirrors=())
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path / "b"))
    _assert_same(load_idx_dataset(spec, tmp_path / "a", download=False), arrays_a)
    _assert_same(load_idx_dataset(spec, download=False), arrays_b)
    # a data_dir lacking files is passed over for the next folder that has them all
    _assert_same(load_idx_dataset(spec, tmp_path / "empty", download=False), arrays_b)
    # $FNN_DATA_DIR/<folder> is searched too
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path))
    (tmp_path / "a").rename(tmp_path / "fake")
    _assert_same(load_idx_dataset(spec, download=False), arrays_a)


def test_local_file_with_wrong_content_is_rejected(tmp_path):
    spec, arrays = _fake_spec(tmp_path / "d")
    images = arrays["test"][0].copy()
    images[0, 0, 0] ^= 1
    bad = tmp_path / "d" / "test-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(images, 8)))
    with pytest.raises(ChecksumError, match="delete it") as err:
        load_idx_dataset(spec, tmp_path / "d", download=False)
    assert str(bad) in str(err.value)


def test_local_file_with_wrong_shape_is_rejected(tmp_path):
    spec, _ = _fake_spec(tmp_path / "d", checksum_of="file")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8), 8)))
    with pytest.raises(IdxFormatError, match=r"shape \(6,\)"):
        load_idx_dataset(spec, tmp_path / "d", download=False)


def test_offline_error_lists_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(ds, "MNIST", ds.MNIST._replace(mirrors=((tmp_path / "x").as_uri() + "/",)))
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist(progress=False)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    for name in NAMES:
        assert name in message
    for folder in (tmp_path / "env", tmp_path / "env" / "mnist",
                   tmp_path / "xdg-cache" / "fnn" / "mnist"):
        assert str(folder) in message
    assert "FNN_DATA_DIR" in message and "failed" in message
    assert not (tmp_path / "xdg-cache").exists()  # a failed download leaves no empty folders


def test_download_false_does_not_try(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("download=False must not open a URL")

    monkeypatch.setattr(dl, "_open_url", no_network)
    with pytest.raises(DatasetNotFoundError, match="download=True would fetch"):
        load_mnist(download=False)


@needs_mnist
def test_fashion_mnist_is_not_read_from_the_env_root(monkeypatch):
    monkeypatch.setenv("FNN_DATA_DIR", str(MNIST_DIR))  # MNIST's same-named files are there
    with pytest.raises(DatasetNotFoundError, match="fashion_mnist"):
        load_fashion_mnist(download=False)


@pytest.fixture(scope="module")
def real_mnist():
    if MNIST_DIR is None:
        pytest.skip("MNIST files not available")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNN_DATA_DIR", str(MNIST_DIR))
        mp.setenv("XDG_CACHE_HOME", "/nonexistent-fnn-cache")
        return load_mnist(download=False)


def _reference_idx(path: Path, header: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=header).reshape(shape)


@needs_mnist
def test_load_mnist_from_fnn_data_dir(real_mnist):
    (x, y), (xt, yt) = real_mnist["train"], real_mnist["test"]
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert x.dtype == y.dtype == np.uint8
    np.testing.assert_array_equal(
        y, _reference_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz", 8, (60000,)))
    np.testing.assert_array_equal(
        xt, _reference_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz", 16, (10000, 28, 28)))
    assert y[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # the well-known first training labels
    assert np.bincount(yt, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                      1028, 974, 1009]


@needs_mnist
def test_load_mnist_download_path_with_real_checksums(tmp_path, monkeypatch, real_mnist):
    monkeypatch.setattr(ds, "MNIST", ds.MNIST._replace(mirrors=(MNIST_DIR.as_uri() + "/",)))
    data = load_mnist(progress=False)
    cache = tmp_path / "xdg-cache" / "fnn" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(f"{n}.gz" for n in NAMES)
    for split in ("train", "test"):
        for got, want in zip(data[split], real_mnist[split]):
            np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- arrays and CSV

def test_load_arrays_npz_default_and_named_keys(tmp_path):
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    np.savez(tmp_path / "d.npz", x=x, y=y, images=x * 2, labels=y + 1)
    gx, gy = load_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    images, labels = load_arrays(tmp_path / "d.npz", ["images", "labels"])
    np.testing.assert_array_equal(images, x * 2)
    np.testing.assert_array_equal(labels, y + 1)
    with pytest.raises(DataError, match="'pixels'.*images"):
        load_arrays(tmp_path / "d.npz", ["pixels"])


def test_load_arrays_npy_memory_maps_large_files(tmp_path, monkeypatch):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    (small,) = load_arrays(tmp_path / "x.npy")
    assert not isinstance(small, np.memmap)
    np.testing.assert_array_equal(small, x)
    monkeypatch.setattr("fnn.data.arrays.MMAP_THRESHOLD_BYTES", 100)
    (big,) = load_arrays(tmp_path / "x.npy")
    assert isinstance(big, np.memmap) and not big.flags.writeable
    np.testing.assert_array_equal(big, x)
    (forced,) = load_arrays(tmp_path / "x.npy", mmap=True)
    assert isinstance(forced, np.memmap)


def test_load_arrays_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="first"):
        load_arrays(tmp_path / "bad.npz")
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(ValueError, match="neither"):
        load_arrays(tmp_path / "a.txt")


def test_load_csv_string_labels_and_named_columns(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text("a,b,species,c\n1,2,virginica,3\n4,5.5,setosa,6\n7,8,virginica,9\n")
    t = load_csv(path, label_column="species")
    x, y = t  # a Table unpacks as a pair
    assert x is t.x and y is t.y
    assert t.x.dtype == np.float32 and t.x.shape == (3, 3)
    np.testing.assert_array_equal(t.x, [[1, 2, 3], [4, 5.5, 6], [7, 8, 9]])
    assert t.classes == ("setosa", "virginica") and t.y.tolist() == [1, 0, 1]
    assert t.y.dtype == np.int32 and t.feature_names == ("a", "b", "c")
    t2 = load_csv(path, label_column=2, feature_columns=["c", "a"])
    np.testing.assert_array_equal(t2.x, [[3, 1], [6, 4], [9, 7]])


def test_load_csv_numeric_labels_without_header(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("0.5\t7\n1.5\t2\n")
    t = load_csv(path, label_column=-1, delimiter="\t", header=False)
    assert t.y.dtype == np.int32 and t.y.tolist() == [7, 2] and t.classes is None
    path.write_text("7\t0.5\n2\t1.25\n")
    t = load_csv(path, label_column=1, delimiter="\t", header=False)
    assert t.y.dtype == np.float32 and t.y.tolist() == [0.5, 1.25]


def test_load_csv_reports_line_and_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("f,g,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(ValueError, match=r"line 3, column 'g': 'oops'"):
        load_csv(path, label_column="y")
    with pytest.raises(ValueError, match="no column named 'z'"):
        load_csv(path, label_column="z")


def test_standardizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, (50, 3)).astype(np.float32)
    train[:, 2] = 7.0  # a constant feature
    test = rng.normal(0.0, 1.0, (5, 3)).astype(np.float32)
    s = Standardizer.fit(train)
    mean = train.astype(np.float64).sum(0) / len(train)
    std = np.sqrt(((train - mean) ** 2).sum(0) / len(train))
    np.testing.assert_allclose(s.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(s.std[:2], std[:2], rtol=1e-5)
    assert s.std[2] == 1.0
    expected = (test - mean) / np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(s.transform(test), expected, rtol=1e-5, atol=1e-6)
    z = s.transform(train)
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-5)
    assert np.all(z[:, 2] == 0)
    np.testing.assert_allclose(s.inverse_transform(s.transform(test)), test, atol=1e-5)


# --------------------------------------------------------------------------- synthetic

def test_xor():
    x, y = xor()
    assert x.shape == (4, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]).astype(int))


def test_two_spirals_lie_on_their_spirals():
    x, y = two_spirals(300, noise=0.0, turns=1.5, seed=3)
    assert x.shape == (300, 2) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.bincount(y).tolist() == [150, 150]
    pts = np.where(y[:, None] == 0, x, -x).astype(np.float64)  # class 1 is class 0 turned 180°
    r = np.hypot(pts[:, 0], pts[:, 1])
    t = r * 2 * np.pi * 1.5  # r = t / t_max
    np.testing.assert_allclose(pts[:, 0], r * np.cos(t), atol=1e-5)
    np.testing.assert_allclose(pts[:, 1], r * np.sin(t), atol=1e-5)
    a, b = two_spirals(300, noise=0.1, seed=3), two_spirals(300, noise=0.1, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], two_spirals(300, noise=0.1, seed=4)[0])


def test_circles_radii():
    x, y = circles(101, noise=0.0, factor=0.3, seed=0)
    r = np.hypot(x[:, 0], x[:, 1])
    assert np.bincount(y).tolist() == [50, 51]
    np.testing.assert_allclose(r[y == 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(r[y == 1], 0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="factor"):
        circles(10, factor=1.5)


def test_noisy_regression():
    d = noisy_regression(10, noise=0.0, seed=0)
    assert d.x.shape == d.y.shape == (10, 1) and d.x_grid.shape == (200, 1)
    np.testing.assert_allclose(d.x[:, 0], np.linspace(0, 1, 10), atol=1e-7)
    np.testing.assert_allclose(d.y[:, 0], np.sin(2 * np.pi * d.x[:, 0]), atol=1e-6)
    np.testing.assert_allclose(d.y_grid[:, 0], np.sin(2 * np.pi * d.x_grid[:, 0]), atol=1e-6)
    noisy = noisy_regression(2000, noise=0.3, seed=1)
    residual = noisy.y[:, 0] - np.sin(2 * np.pi * noisy.x[:, 0])
    assert abs(residual.std() - 0.3) < 0.03

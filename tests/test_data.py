from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import pytest

from mnist_ladder.engine import data


def test_real_mnist_matches_canonical_facts(mnist: data.MNIST) -> None:
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.test_images.shape == (10_000, 28, 28)
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist.train_labels.bincount().tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert mnist.test_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def idx_files(mnist: data.MNIST) -> dict[str, bytes]:
    cache = data.fetch()
    return {n: (cache / n).read_bytes() for n in data.FILES}


def write_raw(folder: Path, files: dict[str, bytes], gz: bool) -> Path:
    raw = folder / "MNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    for name, blob in files.items():
        if gz:
            (raw / (name + ".gz")).write_bytes(gzip.compress(blob, compresslevel=1))
        else:
            (raw / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_source_verifies_and_caches(tmp_path: Path, idx_files, gz: bool) -> None:
    folder = write_raw(tmp_path / "user", idx_files, gz)
    cache = data.fetch(tmp_path / "cache", idx_dir=folder, use_network=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES)
    loaded = data.load(cache)  # now served from the cache alone
    assert loaded.test_labels[:3].tolist() == [7, 2, 1]


def test_truncated_source_is_refused_and_nothing_cached(tmp_path: Path, idx_files) -> None:
    files = dict(idx_files)
    files["t10k-images-idx3-ubyte"] = files["t10k-images-idx3-ubyte"][:-100]
    folder = write_raw(tmp_path / "user", files, gz=False)
    with pytest.raises(data.DataError, match="truncated") as e:
        data.fetch(tmp_path / "cache", idx_dir=folder, use_network=False)
    assert "Supply the files by hand" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_corrupted_cache_is_detected_and_fetched_again(tmp_path: Path, idx_files) -> None:
    folder = write_raw(tmp_path / "user", idx_files, gz=True)
    cache = data.fetch(tmp_path / "cache", idx_dir=folder, use_network=False)
    target = cache / "train-labels-idx1-ubyte"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0xFF  # one flipped byte, same size
    target.write_bytes(bytes(blob))
    data.fetch(cache, idx_dir=folder, use_network=False)
    data.verify("train-labels-idx1-ubyte", target.read_bytes())


def test_every_source_failing_lists_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(data.DataError) as e:
        data.fetch(tmp_path / "cache", idx_dir=tmp_path / "nowhere", use_network=False)
    msg = str(e.value)
    assert "cache" in msg and "IDX folder" in msg and "--idx-dir" in msg


def test_pickle_with_code_is_refused_before_and_after_checksum() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = gzip.compress(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(data.DataError, match="sha256"):
        data.idx_from_pickle(evil)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()


def test_idx_round_trip(idx_files) -> None:
    blob = idx_files["t10k-labels-idx1-ubyte"]
    assert data.to_idx(data.parse_idx(blob).numpy()) == blob

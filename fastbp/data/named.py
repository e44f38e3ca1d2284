"""The named data sets: MNIST and Fashion-MNIST, fetched into a cache and verified, read from
their four IDX files; and the UCI digits shipped with fastbp."""
import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._tempfiles import create_beside
from .files import CHUNK, DataError, read_idx

__all__ = ["NAMED", "cache_dir", "download_verified", "fetch", "read_idx_set", "digits_path"]

_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class _Remote:
    mirrors: tuple
    sha256: dict  # file name (.gz) -> hex digest
    class_names: tuple


# SHA-256 of the original gzipped files (MNIST: checked here against the well-known MD5s of the
# originals; Fashion-MNIST: as published by two independent projects that verify them).
NAMED = {
    "mnist": _Remote(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        sha256={
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        class_names=tuple(str(d) for d in range(10))),
    "fashion-mnist": _Remote(
        # S3 website endpoints serve plain http; the SHA-256 check is what makes a file trusted.
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),
        sha256={
            "train-images-idx3-ubyte.gz":
                "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "train-labels-idx1-ubyte.gz":
                "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "t10k-images-idx3-ubyte.gz":
                "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "t10k-labels-idx1-ubyte.gz":
                "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot")),
}


# -------------------------------------------------------------------------------------------------
# Downloads and the cache


def cache_dir():
    """Folder for downloaded data: $FASTBP_CACHE_DIR, else $XDG_CACHE_HOME/fastbp, else
    ~/.cache/fastbp."""
    if os.environ.get("FASTBP_CACHE_DIR"):
        return Path(os.environ["FASTBP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastbp"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_verified(urls, dest, sha256, max_bytes=256 << 20, timeout=60):
    """Download the first of ``urls`` whose content has SHA-256 ``sha256`` to ``dest``.

    Each attempt streams into a temporary file beside ``dest`` (at most ``max_bytes``), hashing
    as it goes; only a file with the right digest is renamed to ``dest``, so ``dest`` never holds
    a partial or wrong file. Raises DataError naming the last failure when every URL fails.
    """
    import urllib.request  # only needed here; keeps `import fastbp` light

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp = create_beside(dest, ".part")
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DataError(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                failures.append(f"{url}: SHA-256 mismatch (got {digest.hexdigest()})")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"could not download {dest.name}: {'; '.join(failures)}")


def fetch(name, cache=None, mirrors=None, download=True, log=None):
    """Folder holding the verified IDX files of ``name`` ("mnist" or "fashion-mnist").

    Files already in the cache are used when their SHA-256 matches; missing or damaged ones are
    downloaded (when ``download``) from ``mirrors`` (default: the public mirrors in ``NAMED``).
    ``log``, if given, is called with a line before each download.
    """
    remote = NAMED[name]
    folder = Path(cache if cache is not None else cache_dir()) / name
    new_dirs = [d for d in (folder.parent, folder) if not d.exists()]
    try:
        for file_name, digest in remote.sha256.items():
            path = folder / file_name
            if path.is_file() and _sha256(path) == digest:
                continue
            if not download:
                state = "does not match its SHA-256" if path.exists() else "is missing"
                raise DataError(f"{name}: {path} {state}")
            urls = [base + file_name for base in (mirrors or remote.mirrors)]
            if log is not None:
                log(f"downloading {file_name} into {folder}")
            try:
                download_verified(urls, path, digest)
            except DataError as exc:
                raise DataError(f"{exc} (no network? fetch the four files yourself and give "
                                "their folder as data_dir / --data-dir)") from None
            except OSError as exc:   # the cache folder: not a folder, not writable, full
                raise DataError(f"{name}: cannot write the download cache {folder}: "
                                f"{exc.strerror or exc} (set FASTBP_CACHE_DIR to a writable "
                                "folder, or give the files' folder as data_dir / --data-dir)"
                                ) from None
    except BaseException:
        for d in reversed(new_dirs):  # leave no empty folders behind
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return folder


def _find_idx(folder, stem, name):
    for candidate in (stem + ".gz", stem):
        path = Path(folder) / candidate
        if path.is_file():
            return path
    raise DataError(f"{name}: neither {stem}.gz nor {stem} found in {folder}")


def read_idx_set(folder, name="IDX data", n_classes=10):
    """(X_train, y_train, X_test, y_test, image_shape) from the four IDX files in ``folder``:
    images (N, rows, cols) uint8 flattened to (N, rows*cols), labels (N,) uint8 in
    0..n_classes-1."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{name}: data folder {folder} does not exist")
    out = []
    for part in ("train", "test"):
        images_path = _find_idx(folder, _IDX_NAMES[part + "_images"], name)
        labels_path = _find_idx(folder, _IDX_NAMES[part + "_labels"], name)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 images (N, rows, cols), got "
                            f"{images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} "
                            f"of shape {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{labels_path}: {labels.shape[0]} labels for "
                            f"{images.shape[0]} images in {images_path.name}")
        if images.shape[0] == 0 or images[0].size == 0:
            raise DataError(f"{images_path}: holds no images (shape {images.shape})")
        if labels.size and labels.max() >= n_classes:
            raise DataError(f"{labels_path}: label {labels.max()} out of range 0..{n_classes - 1}")
        out += [images.reshape(images.shape[0], -1), labels]
    if out[0].shape[1] != out[2].shape[1]:
        raise DataError(f"{name}: training images have {out[0].shape[1]} pixels, test images "
                        f"{out[2].shape[1]}")
    return tuple(out) + (images.shape[1:],)


def digits_path():
    """Path of the shipped digits.npz: inside the installed package (fastbp/_data), or the
    top-level data/ folder of a source checkout."""
    for package, parts in (("fastbp._data", ()), ("fastbp", ("_data",))):
        try:
            path = importlib.resources.files(package).joinpath(*parts, "digits.npz")
            if path.is_file():
                return Path(os.fspath(path))
        except (ModuleNotFoundError, TypeError, NotADirectoryError):
            pass
    path = Path(__file__).resolve().parents[2] / "data" / "digits.npz"
    if path.is_file():
        return path
    raise DataError("digits: the shipped data file digits.npz is missing from this "
                    "installation (reinstall fastbp)")

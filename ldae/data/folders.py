"""Image datasets: ImageFolder trees, uncompressed tars, .tar.gz archives and WebDataset shards.

Every dataset yields ``(image, label)`` where ``image`` is an RGB ``PIL.Image`` (or whatever
``transform`` makes of it) and ``label`` is the index of the class folder name in sorted order
(``torchvision.datasets.ImageFolder`` semantics: ``.classes``, ``.class_to_idx``, ``.targets``).

* :func:`build_dataset` finds the class folders of a local tree or archive.
* :class:`ShardDataset` / :func:`write_shards` stream and write WebDataset-style shards.
* :func:`build_transform` is the standard resize / crop / flip / normalize pipeline.

The GPU-resident path for small datasets lives in :mod:`ldae.data.resident`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import posixpath
import random
import re
import shutil
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ldae.data.image_decode import BAD_IMAGE_POLICIES, SKIP_HINT, BadImageError, decode_rgb, record_skip

__all__ = [
    "IMG_EXTENSIONS", "ImageFolderDataset", "TarImageDataset", "ShardDataset",
    "build_dataset", "build_transform", "default_cache_dir", "expand_urls",
    "extract_archive", "write_shards",
]

_logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_LAYOUTS = ("<path>/<class>/<image>, <path>/<split>/<class>/<image>, "
            "or one wrapper folder around either")
Transform = Callable[[Image.Image], Any]


def _is_image(name: str) -> bool:
    # Hidden files are skipped: macOS archives carry '._x.jpg' metadata files that are not images.
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)




def _seed_int(*parts: int) -> int:
    """A 63-bit seed mixing several integers (no collisions between e.g. (seed, epoch) pairs)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group, else torchrun's RANK/WORLD_SIZE."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


# ----------------------------------------------------------------------------------------------
# Layout discovery, shared by folders and tar indexes
# ----------------------------------------------------------------------------------------------

class _Tree(Protocol):
    name: str  # name of the root folder, so that split='train' matches a path ending in train/

    def subdirs(self, d: tuple[str, ...]) -> list[str]: ...
    def images(self, d: tuple[str, ...]) -> list[str]: ...


def _has_images(tree: _Tree, d: tuple[str, ...]) -> bool:
    return bool(tree.images(d))


def _is_class_root(tree: _Tree, d: tuple[str, ...]) -> bool:
    return any(_has_images(tree, d + (c,)) for c in tree.subdirs(d))


def _resolve_class_root(tree: _Tree, split: str | None, desc: str) -> tuple[str, ...]:
    """Return the folder (as path parts below the tree root) whose subfolders are the classes."""
    root: tuple[str, ...] = ()
    for depth in range(2):  # the given folder, then at most one wrapper folder
        here = posixpath.join(desc, *root)
        subs = tree.subdirs(root)
        direct = [s for s in subs if _has_images(tree, root + (s,))]  # class folders
        nested = [s for s in subs if s not in direct and _is_class_root(tree, root + (s,))]  # split folders
        if nested:
            if split in nested or (split is None and len(nested) == 1 and not direct):
                return root + (split or nested[0],)
            if split is not None and split in direct:
                raise ValueError(f"{here}/{split} holds image files but no class subfolders: "
                                 f"expected {here}/{split}/<class>/<image>")
            if split is not None:
                raise ValueError(f"split {split!r} not found in {here}: expected {here}/{split}/<class>/<image>; "
                                 f"splits found: {nested}")
            if direct:  # e.g. ImageNet's raw layout: train/<class>/<image> next to a flat val/<image>
                raise ValueError(f"{here} mixes split folders {_preview(nested)} (holding class subfolders) with "
                                 f"folders {_preview(direct)} holding images directly: pass split= one of {nested}")
            raise ValueError(f"{here} holds several splits {nested}: pass split= one of them")
        if direct:
            name = root[-1] if root else tree.name
            if split is not None and split != name:
                if split in direct:
                    raise ValueError(f"{here}/{split} holds image files but no class subfolders: "
                                     f"expected {here}/{split}/<class>/<image>")
                raise ValueError(f"split {split!r} requested, but {here} has no split folders: it holds "
                                 f"class folders directly ({_preview(direct)}); pass split=None")
            return root
        if tree.images(root):
            raise ValueError(f"{here} holds {len(tree.images(root))} image files but no class subfolders: "
                             f"expected {_LAYOUTS} (WebDataset shards are read with ShardDataset)")
        if depth == 0 and len(subs) == 1:
            root = root + (subs[0],)
            continue
        break
    top = tree.subdirs(())
    raise ValueError(f"no images found in {desc}: expected {_LAYOUTS}, with image extensions {IMG_EXTENSIONS}; "
                     f"found {('folders ' + _preview(top)) if top else 'no subfolders'} and no images at "
                     f"those depths")


def _preview(names: Sequence[str], n: int = 8) -> str:
    return str(list(names[:n]))[:-1] + (", ...]" if len(names) > n else "]")


def _class_list(tree: _Tree, root: tuple[str, ...], desc: str) -> list[str]:
    classes = tree.subdirs(root)
    empty = [c for c in classes if not _has_images(tree, root + (c,))]
    if empty:
        raise ValueError(f"class folders without images in {posixpath.join(desc, *root)}: {_preview(empty)} "
                         f"(every subfolder is a class; expected image files {IMG_EXTENSIONS} in each)")
    return classes


class _DirTree:
    """Lazy view of a directory; only the folders layout discovery touches are listed."""

    def __init__(self, root: Path) -> None:
        self.root, self.name = root, root.name
        self._cache: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    def _scan(self, d: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if d not in self._cache:
            dirs, imgs = [], []
            with os.scandir(self.root.joinpath(*d)) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        dirs.append(e.name)
                    elif _is_image(e.name) and e.is_file():
                        imgs.append(e.name)
            self._cache[d] = (sorted(dirs), sorted(imgs))
        return self._cache[d]

    def subdirs(self, d: tuple[str, ...]) -> list[str]:
        return self._scan(d)[0]

    def images(self, d: tuple[str, ...]) -> list[str]:
        return self._scan(d)[1]


class _TarTree:
    """Folder view of a tar index: {dir parts: image names}, directories implied by member paths."""

    def __init__(self, names: Iterable[str], name: str) -> None:
        self.name = name
        dirs: dict[tuple[str, ...], set[str]] = {}
        imgs: dict[tuple[str, ...], list[str]] = {}
        for full in names:
            parts = tuple(_norm_member(full).split("/"))
            if not _is_image(parts[-1]) or any(p.startswith(".") for p in parts[:-1]):
                continue
            for i in range(len(parts) - 1):
                dirs.setdefault(parts[:i], set()).add(parts[i])
            imgs.setdefault(parts[:-1], []).append(parts[-1])
        self._dirs = {k: sorted(v) for k, v in dirs.items()}
        self._imgs = {k: sorted(v) for k, v in imgs.items()}

    def subdirs(self, d: tuple[str, ...]) -> list[str]:
        return self._dirs.get(d, [])

    def images(self, d: tuple[str, ...]) -> list[str]:
        return self._imgs.get(d, [])


def _norm_member(name: str) -> str:
    return posixpath.normpath(name).lstrip("/").removeprefix("./")


# ----------------------------------------------------------------------------------------------
# Map-style datasets
# ----------------------------------------------------------------------------------------------

class _LabeledImages(Dataset):
    """Shared ImageFolder-style surface; subclasses implement ``read_bytes`` and ``where``.

    ``bad_images`` is the policy for unreadable files (:mod:`ldae.data.image_decode`): ``'error'`` stops
    naming the file; ``'skip'`` returns the next readable image (and its label) in the dataset's order
    instead, and appends the file's name to ``skip_record`` when set.
    """

    classes: list[str]
    class_to_idx: dict[str, int]
    targets: list[int]
    transform: Transform | None
    bad_images: str = "error"
    skip_record: str | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def read_bytes(self, index: int) -> tuple[bytes, str]:
        """Encoded file ``index`` and its lower-case extension without the dot (e.g. ``'jpeg'``)."""
        raise NotImplementedError

    def where(self, index: int) -> str:
        """The file of sample ``index`` as a user finds it: a path, or ``archive:member``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:  # also ends plain iteration over the dataset
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for k in range(n):
            i = (index + k) % n
            data, _ = self.read_bytes(i)
            try:
                img = decode_rgb(data, self.where(i))
            except BadImageError as e:
                if self.bad_images != "skip":
                    raise BadImageError(f"{e}; {SKIP_HINT}") from None
                record_skip(self.skip_record, self.where(i), e)
                continue
            return (self.transform(img) if self.transform is not None else img), self.targets[i]
        raise BadImageError(f"none of the {n} images could be decoded (the first: {self.where(index)})")


class ImageFolderDataset(_LabeledImages):
    """Images in ``<root>/<class>/<image>``; ``root`` is the resolved split folder."""

    def __init__(self, path: str | Path, split: str | None = None, transform: Transform | None = None) -> None:
        path = Path(path)
        tree = _DirTree(path)
        rel = _resolve_class_root(tree, split, str(path))
        self.root = path.joinpath(*rel)
        self.classes = _class_list(tree, rel, str(path))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        # Images directly inside each class folder, sorted: the order is reproducible across machines.
        self.samples: list[tuple[str, int]] = [
            (str(self.root / c / f), i) for i, c in enumerate(self.classes) for f in tree.images(rel + (c,))]
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def read_bytes(self, index: int) -> tuple[bytes, str]:
        p = self.samples[index][0]
        return Path(p).read_bytes(), p.rsplit(".", 1)[-1].lower()

    def where(self, index: int) -> str:
        return self.samples[index][0]


@lru_cache(maxsize=8)
def _tar_index(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, int, int], ...]:
    """(member name, data offset, size) of every regular file; size/mtime key out stale entries."""
    try:
        with tarfile.open(path, mode="r:") as tf:
            return tuple((m.name, m.offset_data, m.size) for m in tf if m.isfile() and not m.issparse())
    except tarfile.ReadError as e:
        raise ValueError(f"{path} is not a readable uncompressed tar ({e}); compressed archives must be "
                         f"named .tar.gz or .tgz") from e


class TarImageDataset(_LabeledImages):
    """Random access into an uncompressed tar holding an ImageFolder tree.

    The member offsets are indexed by one scan of the headers; images are then read with ``pread``
    at their offset. The file is opened lazily in each process, so the dataset pickles and works in
    DataLoader workers.
    """

    def __init__(self, path: str | Path, split: str | None = None, transform: Transform | None = None) -> None:
        self.path = str(Path(path).resolve())
        st = os.stat(self.path)
        index = _tar_index(self.path, st.st_size, st.st_mtime_ns)
        by_name = {_norm_member(n): (off, size) for n, off, size in index}
        name = Path(self.path).name
        tree = _TarTree(by_name, name[: -len(".tar")] if name.lower().endswith(".tar") else name)
        rel = _resolve_class_root(tree, split, self.path)
        self.classes = _class_list(tree, rel, self.path)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = [
            ("/".join(rel + (c, f)), i) for i, c in enumerate(self.classes) for f in tree.images(rel + (c,))]
        self.targets = [t for _, t in self.samples]
        # Offsets as arrays: cheap to pickle into spawned workers even for millions of members.
        self._offsets = np.array([by_name[n][0] for n, _ in self.samples], dtype=np.int64)
        self._sizes = np.array([by_name[n][1] for n, _ in self.samples], dtype=np.int64)
        self.transform = transform
        self._fh: io.BufferedReader | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, -1  # file handles do not cross processes
        return state

    def __del__(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self._fh.close()

    def _file(self) -> io.BufferedReader:
        if self._fh is None or self._pid != os.getpid():  # forked workers must not share a file offset
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        return self._fh

    def read_bytes(self, index: int) -> tuple[bytes, str]:
        off, size = int(self._offsets[index]), int(self._sizes[index])
        fh = self._file()
        if hasattr(os, "pread"):
            data = os.pread(fh.fileno(), size, off)
        else:
            fh.seek(off)
            data = fh.read(size)
        if len(data) != size:
            raise OSError(f"{self.path}: member {self.samples[index][0]} is truncated "
                          f"(expected {size} bytes at offset {off}, read {len(data)})")
        return data, self.samples[index][0].rsplit(".", 1)[-1].lower()

    def where(self, index: int) -> str:
        return f"{self.path}:{self.samples[index][0]}"


def default_cache_dir() -> Path:
    """``$LDAE_CACHE`` if set, else ``~/.cache/ldae``."""
    return Path(os.environ.get("LDAE_CACHE") or Path.home() / ".cache" / "ldae").expanduser()


def _archive_stem(name: str) -> str:
    for ext in (".tar.gz", ".tgz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def extract_archive(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Extract a ``.tar.gz``/``.tgz`` once and return the extracted folder.

    The folder is ``<cache_dir>/<name>-<sha256(path, size, mtime)[:16]>`` with ``cache_dir`` defaulting to
    ``default_cache_dir() / 'extracted'``. Extraction goes to a temporary sibling that is renamed into
    place, so an interrupted run leaves no half-extracted folder and concurrent runs agree on one copy.
    Only regular image files are written (what the readers use), at most :func:`extract_limit` bytes and
    what the disk holds; members with absolute paths or ``..`` are refused.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "extracted"
    dest = base / f"{_archive_stem(path.name)}-{key}"
    if dest.is_dir():
        return dest
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=base))
    _logger.info("extracting %s to %s (once)", path, dest)
    try:
        _extract_regular_files(path, tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # anything but "another process finished first" is an error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


EXTRACT_RATIO = 100  # default cap on the extracted bytes, as a multiple of the archive's size
EXTRACT_ENV = "LDAE_EXTRACT_MAX_BYTES"


def extract_limit(archive: Path) -> int:
    """The most bytes :func:`extract_archive` writes for ``archive``: ``$LDAE_EXTRACT_MAX_BYTES``, else
    100x the archive's size (at least 64 MiB). Image data barely compresses, so more is a bomb."""
    env = os.environ.get(EXTRACT_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"${EXTRACT_ENV} must be a number of bytes, got {env!r}") from None
    return max(EXTRACT_RATIO * archive.stat().st_size, 64 << 20)


def _extract_regular_files(archive: Path, out: Path) -> None:
    """Write the archive's image members (the only files a reader uses) under ``out``, within the limits."""
    made: set[Path] = set()
    limit, written = extract_limit(archive), 0
    free = shutil.disk_usage(out).free
    # Streaming mode reads the gzip once front to back, the only efficient order for it.
    with tarfile.open(archive, mode="r|*") as tf:
        for m in tf:
            if not m.isfile() or not _is_image(posixpath.basename(m.name)):
                continue
            name = _norm_member(m.name)
            if os.path.isabs(m.name) or name == ".." or name.startswith("../"):
                raise ValueError(f"{archive}: refusing to extract member outside the target: {m.name!r}")
            written += m.size
            if written > limit:
                raise ValueError(
                    f"{archive}: its images exceed {limit:,} bytes extracted ({EXTRACT_RATIO}x the archive, or "
                    f"${EXTRACT_ENV}) at member {m.name!r}: a decompression bomb, or set ${EXTRACT_ENV} to allow more")
            if written > free:
                raise OSError(f"{archive}: extracting needs more than the {free:,} bytes free in {out.parent}")
            target = out / name
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            src = tf.extractfile(m)
            assert src is not None
            with open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def build_dataset(path: str | Path, split: str | None = None, transform: Transform | None = None,
                  *, cache_dir: str | Path | None = None, bad_images: str = "error",
                  skip_record: str | os.PathLike | None = None) -> _LabeledImages:
    """An ``(image, label)`` dataset over a folder, ``.tar`` or ``.tar.gz``/``.tgz`` archive.

    Layouts accepted (found automatically): ``<path>/<class>/<image>``, ``<path>/<split>/<class>/<image>``,
    and either of those inside one wrapper folder (``<path>/cifar10-jpeg/train/<class>/<image>``).
    ``split=None`` picks the only split present; with several, it must be named. Class folders must hold
    their images directly (jpg, jpeg, png, bmp, webp in any case); hidden files are ignored.

    * folder: :class:`ImageFolderDataset`.
    * ``.tar``: :class:`TarImageDataset`, read in place by member offset.
    * ``.tar.gz``/``.tgz``: extracted once by :func:`extract_archive` into ``cache_dir``, then read as a folder.

    ``bad_images`` / ``skip_record``: the policy for unreadable images (see :class:`_LabeledImages`).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (naming what was expected and
    what was found) for unknown splits, empty trees, images without class folders and unknown file types.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path} (expected a folder, .tar, .tar.gz or .tgz)")
    ds: _LabeledImages
    lower = path.name.lower()
    if path.is_dir():
        ds = ImageFolderDataset(path, split, transform)
    elif lower.endswith((".tar.gz", ".tgz")):
        ds = ImageFolderDataset(extract_archive(path, cache_dir), split, transform)
    elif lower.endswith(".tar"):
        ds = TarImageDataset(path, split, transform)
    else:
        raise ValueError(f"unsupported dataset file {path}: expected a folder, a .tar, or a .tar.gz/.tgz archive "
                         f"(WebDataset shards are read with ShardDataset)")
    ds.bad_images, ds.skip_record = bad_images, (str(skip_record) if skip_record is not None else None)
    return ds


# ----------------------------------------------------------------------------------------------
# WebDataset-format shards
# ----------------------------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(s: str) -> list[str]:
    m = _BRACE.search(s)
    if m is None:
        return [s]
    body, head, tail = m.group(1), s[: m.start()], s[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        if int(hi) < int(lo):
            raise ValueError(f"descending brace range {{{body}}} in {s!r}")
        width = len(lo) if lo.startswith("0") else 0  # '{000..009}' keeps its zero padding
        alts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        alts = body.split(",")
    return [x for a in alts for x in _expand_braces(head + a + tail)]


def expand_urls(urls_or_pattern: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a brace pattern (``'shards-{000000..000009}.tar'``, ``'{a,b}.tar'``), a list of
    patterns, or a folder (its ``*.tar`` files, sorted)."""
    items = [urls_or_pattern] if isinstance(urls_or_pattern, (str, Path)) else list(urls_or_pattern)
    out: list[str] = []
    for u in items:
        u = str(u)
        if os.path.isdir(u):
            out += sorted(str(p) for p in Path(u).iterdir() if p.name.endswith(".tar") and not p.name.startswith("."))
        else:
            out += _expand_braces(u)
    if not out:
        raise ValueError(f"no shards in {urls_or_pattern!r}: expected a pattern like 'shards-{{000000..000009}}.tar', "
                         f"a list of .tar paths, or a folder of .tar files")
    return out


def _iter_shard(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for consecutive members sharing a key (``<key>.<ext>``)."""
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        key, parts = None, {}
        for m in tf:
            if not m.isfile():
                continue
            d, base = posixpath.split(m.name)
            stem, dot, ext = base.partition(".")  # WebDataset: the extension is everything after the first dot
            if not dot or stem == "":
                continue
            k = posixpath.join(d, stem)
            if k != key:
                if parts:
                    yield key, parts  # type: ignore[misc]
                key, parts = k, {}
            src = tf.extractfile(m)
            assert src is not None
            parts[ext.lower()] = src.read()
        if parts:
            yield key, parts  # type: ignore[misc]


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle with a fixed-size buffer (memory O(size), not O(dataset))."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = rng.randrange(size)
        buf[j], x = x, buf[j]
        yield x
    rng.shuffle(buf)
    yield from buf


class ShardDataset(IterableDataset):
    """Stream ``(image, label)`` from WebDataset-format tar shards, without the webdataset package.

    A shard holds members ``<key>.<jpg|jpeg|png|bmp|webp>`` and ``<key>.cls`` (the integer label as
    text); a sample without ``.cls`` gets label ``-1``. Shards are split first across DDP ranks, then
    across DataLoader workers (``shards[rank::world_size][worker::num_workers]``), so every shard is read
    by exactly one worker of one rank. Ranks may see different sample counts when shard sizes differ.

    ``shuffle_buffer > 0`` shuffles the shard order with ``(seed, epoch)`` (identical on all ranks) and
    the samples through a buffer of that many encoded samples; ``shuffle_buffer=0`` reads in order (eval).
    Call :meth:`set_epoch` before each epoch; with ``persistent_workers=True`` the workers keep the epoch
    they were started with, so use non-persistent workers or rebuild the DataLoader.

    Args:
        urls_or_pattern: brace pattern, list of paths, or folder of ``.tar`` shards (see :func:`expand_urls`).
        transform: applied to the RGB ``PIL.Image``.
        shuffle_buffer: samples held for shuffling; 0 disables all shuffling.
        seed: base seed for shard order and sample shuffling.
        rank, world_size: default to the process group, else ``RANK``/``WORLD_SIZE``, else 0/1.
        bad_images, skip_record: the policy for unreadable images (see :class:`_LabeledImages`); a
            skipped sample is left out of the stream.
    """

    def __init__(self, urls_or_pattern: str | Path | Sequence[str | Path], transform: Transform | None = None,
                 shuffle_buffer: int = 2000, seed: int = 0, *, rank: int | None = None,
                 world_size: int | None = None, bad_images: str = "error",
                 skip_record: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.urls = expand_urls(urls_or_pattern)
        missing = [u for u in self.urls if not os.path.isfile(u)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.urls)} shards do not exist, e.g. {missing[0]}")
        self.rank, self.world_size = _dist_info(rank, world_size)
        if len(self.urls) < self.world_size:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {self.world_size} ranks: "
                             f"expected at least one shard per rank; write smaller shards")
        self.transform, self.shuffle_buffer, self.seed, self.epoch = transform, int(shuffle_buffer), int(seed), 0
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
        self.bad_images, self.skip_record = bad_images, (str(skip_record) if skip_record is not None else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_for(self, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards one worker of this rank reads in the current epoch, in reading order."""
        order = np.arange(len(self.urls))
        if self.shuffle_buffer > 0:
            order = np.random.default_rng(_seed_int(self.seed, self.epoch)).permutation(len(self.urls))
        return [self.urls[i] for i in order[self.rank::self.world_size][worker_id::num_workers]]

    def _sample(self, shard: str, key: str, parts: dict[str, bytes]) -> tuple[Any, int]:
        ext = next((e for e in parts if "." + e in IMG_EXTENSIONS), None)
        if ext is None:
            raise ValueError(f"{shard}: sample {key!r} has no image member: expected one of "
                             f"{IMG_EXTENSIONS}, found extensions {sorted(parts)}")
        img = decode_rgb(parts[ext], f"{shard}:{key}.{ext}")
        label = int(parts["cls"].decode().strip()) if "cls" in parts else -1
        return (self.transform(img) if self.transform is not None else img), label

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        raw = ((s, k, p) for s in self.shards_for(wid, nw) for k, p in _iter_shard(s))
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed_int(self.seed, self.epoch, self.rank, wid))
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        for shard, key, parts in raw:  # decode after shuffling: the buffer holds compact encoded bytes
            try:
                sample = self._sample(shard, key, parts)
            except BadImageError as e:
                if self.bad_images != "skip":
                    raise BadImageError(f"{e}; {SKIP_HINT}") from None
                record_skip(self.skip_record, f"{shard}:{key}", e)
                continue
            yield sample


_PATTERN_ERR = "out_pattern needs one printf integer field like 'train-%06d.tar', got {!r}"
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"BM", "bmp"))


def _encode(img: Any, fmt: str, quality: int) -> tuple[bytes, str]:
    """Encode a PIL image, uint8 tensor ``(C,H,W)``/``(H,W)``, uint8 array ``(H,W,C)``/``(H,W)`` or pass
    through already-encoded bytes; returns ``(bytes, extension)``."""
    if isinstance(img, (bytes, bytearray)):
        for magic, ext in _MAGIC:
            if img.startswith(magic):
                return bytes(img), ext
        if img[:4] == b"RIFF" and img[8:12] == b"WEBP":
            return bytes(img), "webp"
        raise ValueError("encoded image bytes of unknown type: expected jpg, png, bmp or webp")
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {img.dtype}: scale and convert first")
        img = img.cpu().numpy()
        if img.ndim == 3:
            img = img.transpose(1, 2, 0)  # (C,H,W) -> (H,W,C)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image array, got {img.dtype}")
        img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img)
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, uint8 tensor/array or encoded bytes, got {type(img).__name__}")
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format={"png": "PNG", "webp": "WEBP", "bmp": "BMP"}[fmt],
                 **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue(), fmt


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed metadata: identical inputs, identical shards
    tf.addfile(info, io.BytesIO(data))


def write_shards(dataset: Dataset, out_pattern: str, max_count: int = 1000, *, image_format: str = "png",
                 quality: int = 95, progress: bool | None = None) -> list[str]:
    """Write ``dataset`` as WebDataset-format shards readable by :class:`ShardDataset`.

    Args:
        dataset: yields ``(image, label)``; image a PIL image, uint8 tensor ``(C,H,W)``/``(H,W)``,
            uint8 array ``(H,W,C)``/``(H,W)``, or encoded bytes. A dataset from :func:`build_dataset`
            without a transform is copied byte for byte (no re-encoding).
        out_pattern: printf pattern with one integer field, e.g. ``'out/train-%06d.tar'``.
        max_count: samples per shard.
        image_format: ``'png'`` (lossless, default), ``'jpg'`` (``quality``), ``'webp'`` (lossless) or ``'bmp'``
            for images that must be encoded.
        progress: tqdm bar; default on when stderr is a terminal.

    Returns:
        The shard paths in order. Members are ``<index:09d>.<ext>`` and ``<index:09d>.cls``. Each shard is
        written to a hidden temporary file and renamed, so readers never see a partial shard.
    """
    from tqdm.auto import tqdm

    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if image_format not in ("png", "jpg", "jpeg", "webp", "bmp"):
        raise ValueError(f"image_format must be png, jpg, webp or bmp, got {image_format!r}")
    try:
        names = (out_pattern % 0, out_pattern % 1)
    except TypeError as e:
        raise ValueError(_PATTERN_ERR.format(out_pattern)) from e
    if names[0] == names[1]:
        raise ValueError(_PATTERN_ERR.format(out_pattern))
    # Our own datasets without a transform hold the original files: copy them rather than re-encode.
    raw = isinstance(dataset, _LabeledImages) and dataset.transform is None
    n = len(dataset)  # type: ignore[arg-type]
    paths: list[str] = []
    bar = tqdm(total=n, unit="img", desc="write shards",
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    for s, start in enumerate(range(0, n, max_count)):
        final = Path(out_pattern % s)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for i in range(start, min(start + max_count, n)):
                    if raw:
                        data, ext = dataset.read_bytes(i)
                        label = dataset.targets[i]
                    else:
                        img, label = dataset[i]
                        data, ext = _encode(img, image_format, quality)
                    _add_member(tf, f"{i:09d}.{ext}", data)
                    _add_member(tf, f"{i:09d}.cls", str(int(label)).encode())
                    bar.update(1)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths.append(str(final))
    bar.close()
    return paths


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def build_transform(img_size: int, train: bool, mean: Sequence[float], std: Sequence[float],
                    crop: str = "center", hflip: bool = False, crop_pct: float = 1.0,
                    interpolation: str = "bicubic", scale: tuple[float, float] = (0.2, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalized float tensor ``(3, img_size, img_size)``.

    * ``crop='center'``: resize the shorter side to ``floor(img_size / crop_pct)`` then center-crop
      ``img_size`` (timm's convention; ``crop_pct=1.0`` keeps the whole shorter side, the l-DAE
      pretraining default; 0.875 is the classic 256 -> 224 evaluation crop).
    * ``crop='random_resized'``: ``RandomResizedCrop(img_size, scale, ratio)``; ``scale=(0.2, 1.0)`` is
      MAE's pretraining range (pass ``(0.08, 1.0)`` for the usual supervised one).
    * ``hflip``: random horizontal flip with p=0.5.
    * ``train=False`` ignores ``crop`` and ``hflip``: evaluation is always the deterministic center crop.

    ``interpolation`` is a torchvision ``InterpolationMode`` value ('bicubic', 'bilinear', ...);
    PIL resizing is antialiased. Output is ``(x / 255 - mean) / std`` per channel.
    """
    from torchvision import transforms as T

    if crop not in ("center", "random_resized"):
        raise ValueError(f"crop must be 'center' or 'random_resized', got {crop!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    interp = T.InterpolationMode(interpolation)
    if train and crop == "random_resized":
        ops: list[Any] = [T.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interp)]
    else:
        ops = [T.Resize(math.floor(img_size / crop_pct), interpolation=interp), T.CenterCrop(img_size)]
    if train and hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(ops)

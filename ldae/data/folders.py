"""Labeled image datasets on local files: ImageFolder trees, uncompressed tars and ``.tar.gz`` archives.

Every dataset yields ``(image, label)`` where ``image`` is an RGB ``PIL.Image`` (or whatever
``transform`` makes of it) and ``label`` is the index of the class folder name in sorted order
(``torchvision.datasets.ImageFolder`` semantics: ``.classes``, ``.class_to_idx``, ``.targets``).
:func:`build_dataset` finds the class folders of a tree or archive (under a split and a wrapper
folder too). Streaming shards are in :mod:`ldae.data.shards`, the GPU-resident path in
:mod:`ldae.data.resident`.

These readers, not timm's ``ImageDataset``, because they read ``.tar.gz`` archives, find class
folders below a split or wrapper folder, and apply the bad-image policy (a named error, or the next
readable image, deterministically). The measured price (``bench/results/readers_cpu.json``): on a tar
they read faster than timm's reader, on a folder of 32 px files the checked decode is slower per file.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldae.data.archives import extract_archive, normalize_member
from ldae.data.image_decode import BAD_IMAGE_POLICIES, IMG_EXTENSIONS, SKIP_HINT, BadImageError, decode_rgb, is_image_name, record_skip
from ldae.data.tar_check import check_complete_tar, members_end

__all__ = ["IMG_EXTENSIONS", "ImageFolderDataset", "TarImageDataset", "Transform", "build_dataset"]

_LAYOUTS = ("<path>/<class>/<image>, <path>/<split>/<class>/<image>, "
            "or one wrapper folder around either")


Transform = Callable[[Image.Image], Any]


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
                    elif is_image_name(e.name) and e.is_file():
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
            parts = tuple(normalize_member(full).split("/"))
            if not is_image_name(parts[-1]) or any(p.startswith(".") for p in parts[:-1]):
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
            members = tf.getmembers()
    except tarfile.ReadError as e:
        raise ValueError(f"{path} is not a readable uncompressed tar ({e}); compressed archives must be "
                         f"named .tar.gz or .tgz") from e
    check_complete_tar(path, members_end(members[-1]) if members else 0)
    return tuple((m.name, m.offset_data, m.size) for m in members if m.isfile() and not m.issparse())


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
        by_name = {normalize_member(n): (off, size) for n, off, size in index}
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

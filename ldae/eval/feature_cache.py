"""A safetensors cache of frozen features, keyed by what makes them what they are (backbone, view,
data, split); each file stores the sha256 of its tensors, and a damaged file is recomputed."""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from ldae.engine.dist import get_rank
from ldae.eval.features import FeatureExtractor, FeatureSet, extract_features
from ldae.utils.io import save_safetensors

__all__ = ["FEATURES_FORMAT", "cached_features", "dataset_identity", "load_features", "save_features"]


FEATURES_FORMAT = "ldae.features.v1"


def _content_hash(features: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (features.float().contiguous(), labels.long().contiguous()):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_features(path: str | os.PathLike, fs: FeatureSet, metadata: dict[str, Any]) -> None:
    """Write a :class:`FeatureSet` as safetensors (atomic), ``metadata`` kept as JSON, with the sha256 of
    its tensors so a damaged file is never reused."""
    meta = {"format": FEATURES_FORMAT, "classes": json.dumps(fs.classes), "identity": json.dumps(metadata, sort_keys=True),
            "sha256": _content_hash(fs.features, fs.labels)}
    save_safetensors({"features": fs.features.float(), "labels": fs.labels.long()}, path, meta)


def load_features(path: str | os.PathLike) -> tuple[FeatureSet, dict[str, Any]]:
    """Read a file written by :func:`save_features` -> (features, the identity it was computed with)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{path}: not a feature file (expected format {FEATURES_FORMAT!r}, got {meta.get('format')!r})")
        fs = FeatureSet(f.get_tensor("features"), f.get_tensor("labels"), json.loads(meta["classes"]))
    if fs.features.ndim != 2 or fs.labels.shape != (fs.features.shape[0],):
        raise ValueError(f"{path}: expected features (N, D) and labels (N,), got {tuple(fs.features.shape)} and {tuple(fs.labels.shape)}")
    if meta.get("sha256") != _content_hash(fs.features, fs.labels):
        raise ValueError(f"{path}: the features do not match the sha256 they were saved with (damaged file)")
    if not bool(torch.isfinite(fs.features).all()):
        raise ValueError(f"{path}: the features hold NaN or infinite values")
    return fs, json.loads(meta["identity"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text.removeprefix("local-dir:").rstrip("/")).name or text)[:60]


def cached_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    identity: dict[str, Any],
    cache_dir: str | os.PathLike | None,
    *,
    name: str = "features",
    recompute: bool = False,
    **extract_kwargs: Any,
) -> tuple[FeatureSet, Path | None]:
    """Features of ``dataset``, read from ``cache_dir`` when an identical computation was cached.

    ``identity`` (JSON-able: backbone, level, noise, data, split, preprocessing) names the computation;
    its sha256 is the file name, and the identity stored in the file is compared in full on reading.
    ``cache_dir=None`` disables the cache. Returns the features and the cache file (or None).
    """
    classes = list(getattr(dataset, "classes", []))
    identity = {**identity, "num_images": len(dataset), "classes": classes}  # type: ignore[arg-type]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{_slug(name)}-{key}.safetensors" if cache_dir is not None else None
    rank = get_rank()
    if path is not None and path.is_file() and not recompute:
        try:
            fs, stored = load_features(path)
        except ValueError as e:  # damaged or foreign: computed again and overwritten
            warnings.warn(f"not reusing the feature cache: {e}; computing the features again", stacklevel=2)
        else:
            if json.loads(json.dumps(identity, sort_keys=True, default=str)) == stored:
                return fs, path
    feats, labels = extract_features(extractor, dataset, **extract_kwargs)
    fs = FeatureSet(feats, labels, classes)
    if path is not None and rank == 0:
        save_features(path, fs, json.loads(json.dumps(identity, sort_keys=True, default=str)))
    return fs, path


def dataset_identity(path: str | os.PathLike, split: str | None) -> dict[str, Any]:
    """What identifies a dataset's contents for a cache key: its path, size/mtime and split."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return {"data": str(p), "data_bytes": st.st_size if p.is_file() else None, "data_mtime_ns": st.st_mtime_ns,
            "split": split}

"""Decoded datasets on disk: decoded once, memory-mapped later, refused and redone when stale or damaged."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldae.data import resident
from ldae.data.decoded_cache import cached_decode, data_identity
from ldae.data.resident import load_uint8


def _folder(root: Path, n: int = 6) -> Path:
    for i in range(n):
        cls = root / "train" / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), 20 * i, dtype=np.uint8)).save(cls / f"{i}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LDAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


def _no_decode(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("decoded again although the cache is current")
    monkeypatch.setattr(resident, "build_dataset", refuse)


def test_second_load_is_memory_mapped_without_decoding(tmp_path, cache, monkeypatch):
    data = _folder(tmp_path / "data")
    first, labels = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    assert first.shape == (6, 3, 8, 8) and sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy", ".npy"]
    _no_decode(monkeypatch)
    again, labels_again = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    assert torch.equal(again, first) and torch.equal(labels_again, labels)
    again[0] = 0  # copy-on-write: writable in memory, the file keeps its bytes
    assert torch.equal(load_uint8(data, "train", img_size=8, num_workers=0, cache=True)[0], first)


def test_changed_data_or_parameters_are_decoded_again(tmp_path, cache, monkeypatch):
    data = _folder(tmp_path / "data")
    before, _ = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    Image.fromarray(np.full((12, 10, 3), 255, dtype=np.uint8)).save(data / "train" / "c0" / "0.png")
    st = os.stat(data / "train" / "c0" / "0.png")
    os.utime(data / "train" / "c0" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after, _ = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    assert int(after[0].min()) == 255 and not torch.equal(after, before)  # the stale entry was refused
    other, _ = load_uint8(data, "train", img_size=4, num_workers=0, cache=True)
    assert other.shape == (6, 3, 4, 4)  # another image size is another entry
    assert len(list(cache.glob("*.json"))) == 2  # the stale entry was replaced, not kept beside the new one


def test_damaged_cache_is_refused_and_rewritten(tmp_path, cache):
    data = _folder(tmp_path / "data")
    good, _ = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    (arr,) = cache.glob("*.images.npy")
    arr.write_bytes(arr.read_bytes()[:100])  # truncated
    again, _ = load_uint8(data, "train", img_size=8, num_workers=0, cache=True)
    assert torch.equal(again, good)
    (rec,) = cache.glob("*.json")
    rec.write_text("{not json")
    assert torch.equal(load_uint8(data, "train", img_size=8, num_workers=0, cache=True)[0], good)
    assert json.loads(rec.read_text())["images_shape"] == [6, 3, 8, 8]


def test_skip_policy_and_dataset_objects_are_not_cached(tmp_path, cache):
    from ldae.data.image_decode import ImagePolicy

    data = _folder(tmp_path / "data")
    load_uint8(data, "train", img_size=8, num_workers=0, cache=True, policy=ImagePolicy("skip"))
    assert not cache.exists()


def test_identity_of_an_archive_and_of_a_folder(tmp_path):
    f = tmp_path / "a.tar"
    f.write_bytes(b"x" * 10)
    assert data_identity(f)["bytes"] == 10
    folder = _folder(tmp_path / "data", 2)
    one = data_identity(folder)
    (folder / "train" / "c0" / "extra.png").write_bytes(b"")
    assert data_identity(folder) != one and data_identity(folder)["files"] == 3


def test_cached_decode_checks_what_it_stores(tmp_path):
    with pytest.raises(ValueError, match="expected uint8 images"):
        cached_decode(tmp_path, {"k": 1}, lambda: (torch.zeros(2, 3, 4, 4), torch.zeros(2)), cache_dir=tmp_path / "c")

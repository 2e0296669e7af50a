"""A tar or shard cut short is an error naming it, never a smaller data set."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldae.data.folders import build_dataset
from ldae.data.shards import ShardDataset, write_shards


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), i % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, n: int = 40) -> list[int]:
    """An ImageFolder tar; returns the byte offset where each member's header starts."""
    starts = []
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            data = _png(i)
            info = tarfile.TarInfo(f"train/c{i % 2}/{i:03d}.png")
            info.size = len(data)
            starts.append(tf.fileobj.tell())
            tf.addfile(info, io.BytesIO(data))
    return starts


def test_whole_tar_reads_every_image(tmp_path):
    _tar(tmp_path / "d.tar")
    assert len(build_dataset(tmp_path / "d.tar", "train")) == 40


@pytest.mark.parametrize("cut", ["60%", "member boundary", "end marker"])
def test_truncated_tar_is_refused_by_name(tmp_path, cut):
    path = tmp_path / "d.tar"
    starts = _tar(path)
    size = path.stat().st_size
    at = {"60%": int(0.6 * size), "member boundary": starts[24], "end marker": starts[-1] + 512 + 512}[cut]
    os.truncate(path, at)
    with pytest.raises(ValueError, match=rf"^{path}: truncated tar archive \({at:,} bytes"):
        build_dataset(path, "train")


def test_truncated_shard_is_refused_by_name(tmp_path, cifar_root):
    (shard,) = write_shards(build_dataset(cifar_root, "test"), str(tmp_path / "s-%03d.tar"), max_count=1000)
    assert len(list(ShardDataset(shard, shuffle_buffer=0, rank=0, world_size=1))) == 200
    with tarfile.open(shard) as tf:
        boundary = tf.getmembers()[120].offset  # a header start: tarfile alone would stop here quietly
    for at in (boundary, boundary + 700):  # cut between members, and inside a member's data
        cut = tmp_path / f"cut-{at}.tar"
        cut.write_bytes(Path(shard).read_bytes()[:at])
        with pytest.raises(ValueError, match=rf"^{cut}: truncated"):
            list(ShardDataset(str(cut), shuffle_buffer=0, rank=0, world_size=1))


def test_truncated_tar_gz_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LDAE_CACHE", str(tmp_path / "cache"))
    _tar(tmp_path / "d.tar")
    import gzip

    data = gzip.compress((tmp_path / "d.tar").read_bytes())
    cut = tmp_path / "d.tar.gz"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ValueError, match=rf"^{cut}: truncated or corrupt archive \("):
        build_dataset(cut, "train")
    assert not list((tmp_path / "cache" / "extracted").glob("d-*"))  # no half-extracted folder is kept

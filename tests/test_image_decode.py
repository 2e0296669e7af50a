"""Unreadable images name their file; the skip policy is deterministic and counted; modes convert by value."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldae.data.folders import build_dataset
from ldae.data.image_decode import BadImageError, decode_rgb, read_skipped
from ldae.data.shards import ShardDataset

ROOT = Path(__file__).resolve().parent.parent


def _jpeg(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _folder(root: Path, bad: dict[str, bytes], per_class: int = 4, size: int = 16) -> Path:
    """root/train/{a,b}/NN.jpg with flat colours (10 * index), plus the ``bad`` files under train/a."""
    for c, cls in enumerate("ab"):
        d = root / "train" / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (d / f"{i:02d}.jpg").write_bytes(_jpeg(10 * (c * per_class + i) + 5, size))
    for name, data in bad.items():
        (root / "train" / "a" / name).write_bytes(data)
    return root


BAD_FILES = {
    "zero.jpg": (b"", "empty file (0 bytes)"),
    "text.png": (b"not an image at all\n", "not a readable image"),
    "truncated.jpg": (_jpeg(100, 64)[:200], "corrupt image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_file_is_named_with_what_to_do(tmp_path, name):
    data, what = BAD_FILES[name]
    ds = build_dataset(_folder(tmp_path, {name: data}), "train")
    i = [Path(p).name for p, _ in ds.samples].index(name)
    with pytest.raises(BadImageError) as e:
        ds[i]
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "train" / "a" / name) + ": " + what) and "--bad-images skip" in msg
    assert "\n" not in msg


def test_tar_member_is_named_by_archive_and_member(tmp_path):
    root = _folder(tmp_path / "tree", {"zero.jpg": b""})
    tar = tmp_path / "data.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(root / "train", arcname="train")
    ds = build_dataset(tar, "train")
    i = [n for n, _ in ds.samples].index("train/a/zero.jpg")
    with pytest.raises(BadImageError, match=rf"^{tar.resolve()}:train/a/zero.jpg: empty file"):
        ds[i]


def test_skip_uses_the_next_readable_image_and_records_it(tmp_path):
    record = tmp_path / "skipped.txt"
    ds = build_dataset(_folder(tmp_path / "d", {"01b.jpg": b"", "01c.png": b"junk"}), "train", bad_images="skip", skip_record=record)
    names = [Path(p).name for p, _ in ds.samples]
    assert names[:4] == ["00.jpg", "01.jpg", "01b.jpg", "01c.png"]
    img, label = ds[2]  # 01b and 01c are unreadable: 02.jpg (value 25) takes their place, with its label
    assert np.asarray(img)[0, 0].tolist() == pytest.approx([25] * 3, abs=2) and label == 0
    again, _ = ds[2]
    assert np.array_equal(np.asarray(again), np.asarray(img))  # the same replacement every time
    assert read_skipped(record) == sorted(str(tmp_path / "d/train/a" / n) for n in ("01b.jpg", "01c.png"))


def test_shard_stream_leaves_an_unreadable_sample_out(tmp_path):
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for key, data in (("k0", _jpeg(10)), ("k1", b"broken"), ("k2", _jpeg(30))):
            for ext, payload in (("jpg", data), ("cls", b"0")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(BadImageError, match=rf"{shard}:k1.jpg: not a readable image"):
        list(ShardDataset(str(shard), shuffle_buffer=0, rank=0, world_size=1))
    got = list(ShardDataset(str(shard), shuffle_buffer=0, rank=0, world_size=1, bad_images="skip"))
    assert [int(np.asarray(im)[0, 0, 0]) // 10 for im, _ in got] == [1, 3]


def test_sixteen_bit_and_float_images_convert_by_value(tmp_path):
    grey16 = np.array([[0, 32896, 65535, 1285]], dtype=np.uint16)  # 0, 128, 255, 5 in 8 bits
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    rgb = np.asarray(decode_rgb(buf.getvalue(), "grey16.png"))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 128, 255, 5]
    assert (rgb == rgb[..., :1]).all()
    buf = io.BytesIO()
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(buf, format="TIFF")
    assert np.asarray(decode_rgb(buf.getvalue(), "float.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_wide_integer_and_float_images_convert_by_range_or_are_refused():
    def tiff(a: np.ndarray, mode: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a, mode=mode).save(buf, format="TIFF")
        return buf.getvalue()

    int32 = np.array([[0, 2**30, 2**31 - 1]], dtype=np.int32)  # a 32-bit TIFF using its whole range
    assert np.asarray(decode_rgb(tiff(int32, "I"), "i32.tif"))[0, :, 0].tolist() == [0, 128, 255]  # not all white
    small = np.array([[0, 32896, 65535]], dtype=np.int32)  # 16-bit values stored as 32-bit: scaled as 16-bit
    assert np.asarray(decode_rgb(tiff(small, "I"), "i32.tif"))[0, :, 0].tolist() == [0, 128, 255]
    f255 = np.array([[0.0, 127.6, 255.0]], dtype=np.float32)
    assert np.asarray(decode_rgb(tiff(f255, "F"), "f.tif"))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(BadImageError, match=r"^f1000.tif: float image with values up to 1000; expected 0-1 or 0-255$"):
        decode_rgb(tiff(np.array([[0.0, 1000.0]], dtype=np.float32), "F"), "f1000.tif")
    with pytest.raises(BadImageError, match=r"^nan.tif: float image with NaN or infinite pixels$"):
        decode_rgb(tiff(np.full((2, 2), np.nan, dtype=np.float32), "F"), "nan.tif")


@pytest.mark.parametrize("orientation, transpose", [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90),
                                                    (3, Image.Transpose.ROTATE_180), (1, None)])
def test_exif_orientation_is_applied(orientation, transpose):
    """A phone's portrait JPEG: stored 64 wide x 32 high with Orientation 6 is seen 32 x 64."""
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32] = (250, 0, 0)  # left half red, right half blue as stored
    stored[:, 32:] = (0, 0, 250)
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    got = decode_rgb(buf.getvalue(), "portrait.jpg")
    want = img.transpose(transpose) if transpose is not None else img
    assert got.size == want.size
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int))
    assert diff.mean() < 5  # JPEG-lossy at the red/blue edge, the same picture elsewhere (unrotated would differ by ~125)


def test_decompression_bomb_limit_names_the_file(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImageError, match=r"^big.jpg: larger than Pillow's decompression-bomb limit of 100 pixels"):
        decode_rgb(_jpeg(7, 16), "big.jpg")  # 256 pixels: above the limit but below Pillow's own error at 2x


def _pretrain(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "ldae.pretrain", "--data", str(data), "--split", "train", "--model",
            "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=8", "--fit-tokenizer", "--epochs", "1",
            "--warmup-epochs", "0", "--global-batch", "4", "--output-dir", str(out), "--device", "cpu", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_pretrain_stops_naming_the_file_or_skips_and_counts(tmp_path):
    data = _folder(tmp_path / "d", {"01b.jpg": _jpeg(100, 64)[:200]})
    bad = data / "train" / "a" / "01b.jpg"
    r = _pretrain(data, tmp_path / "err", "--num-workers", "1")  # the error crosses a DataLoader worker
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ldae pretrain: error: {bad}: corrupt image") and "--bad-images skip" in last
    assert "Traceback" not in r.stderr
    r = _pretrain(data, tmp_path / "skip", "--bad-images", "skip", "--gpu-data", "--num-workers", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "skip" / "run.json").read_text())["skipped_images"] == 1
    assert read_skipped(tmp_path / "skip" / "skipped_images.txt") == [str(bad)]
    assert f"skipping an unreadable image: {bad}: corrupt image" in r.stderr  # named even under --quiet


def test_indexing_stays_a_sequence_with_the_skip_policy(tmp_path):
    ds = build_dataset(_folder(tmp_path, {"zz.jpg": b""}), "train", bad_images="skip")
    assert len(list(iter(ds))) == len(ds) == 9  # plain iteration ends: out-of-range indices raise IndexError
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds[-1][1] == ds[len(ds) - 1][1] == 1

"""Loaders, shards, transforms and the GPU-resident path, on CPU against the shared real data."""
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import ldae.data.archives
from ldae.data.archives import extract_archive
from ldae.data.folders import TarImageDataset, build_dataset
from ldae.data.resident import GPUAugment, GPUBatchLoader, load_uint8
from ldae.data.shards import ShardDataset, expand_urls, write_shards
from ldae.data.transforms import build_transform

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4913, 0.4821, 0.4465), (0.247, 0.243, 0.261)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8; module-level so that DataLoader workers can unpickle it."""
    return torch.from_numpy(_pixels(img).copy()).permute(2, 0, 1)


def _save(path: Path, size=(8, 8), color=(10, 20, 30), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


class _IndexImages(Dataset):
    """``n`` tiny images whose pixels and label both encode the index: identity survives any pipeline."""

    def __init__(self, n: int, size: int = 4) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        img = torch.full((3, self.size, self.size), i % 256, dtype=torch.uint8)
        img[1] = i // 256
        img[2, 0, 0] = 7  # not a constant image, so that channel order and layout are checked
        return img, i


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------

def test_class_discovery_matches_folder_order(cifar_root):
    ds = build_dataset(cifar_root / "cifar10-jpeg", split="train")
    assert ds.classes == CIFAR_CLASSES
    assert ds.class_to_idx["airplane"] == 0 and ds.class_to_idx["truck"] == 9
    assert len(ds) == 200
    assert np.bincount(ds.targets).tolist() == [20] * 10
    for path, label in ds.samples[::37]:
        assert Path(path).parent.name == CIFAR_CLASSES[label]
        assert Path(path).parent.parent.name == "train"
    img, label = ds[len(ds) - 1]
    assert label == 9 and img.mode == "RGB" and img.size == (32, 32)
    assert (_pixels(img) == _pixels(Image.open(ds.samples[-1][0]))).all()


def test_split_and_wrapper_autodetection(cifar_root):
    direct = build_dataset(cifar_root / "cifar10-jpeg" / "test")  # <path>/<class>/<img>
    by_split = build_dataset(cifar_root / "cifar10-jpeg", split="test")  # <path>/<split>/<class>/<img>
    wrapped = build_dataset(cifar_root, split="test")  # <path>/cifar10-jpeg/<split>/<class>/<img>
    named = build_dataset(cifar_root / "cifar10-jpeg" / "test", split="test")  # the path is the split
    assert direct.samples == by_split.samples == wrapped.samples == named.samples
    assert all("/test/" in p for p, _ in wrapped.samples)
    assert build_dataset(cifar_root, split="train").samples != wrapped.samples


def test_transform_is_applied(cifar_root):
    ds = build_dataset(cifar_root, split="test", transform=lambda im: _pixels(im).sum())
    value, _ = ds[3]
    assert value == _pixels(Image.open(ds.samples[3][0])).sum()


def test_extensions_case_insensitive_and_hidden_files_skipped(tmp_path):
    for name, fmt in [("a.JPG", "JPEG"), ("b.jpeg", "JPEG"), ("c.PnG", "PNG"), ("d.bmp", "BMP"),
                      ("e.WEBP", "WEBP"), ("._f.jpg", "JPEG")]:
        _save(tmp_path / "cls" / name, fmt=fmt)
    (tmp_path / "cls" / "notes.txt").write_text("not an image")
    ds = build_dataset(tmp_path)
    assert sorted(Path(p).name for p, _ in ds.samples) == ["a.JPG", "b.jpeg", "c.PnG", "d.bmp", "e.WEBP"]
    assert all(_pixels(ds[i][0])[0, 0].tolist() == [10, 20, 30] for i in (2, 3))  # lossless formats


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: .*nowhere"):
        build_dataset(tmp_path / "nowhere")


def test_error_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no images found in .*expected <path>/<class>/<image>.*found no subfolders"):
        build_dataset(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images found.*found folders \['docs'\]"):
        build_dataset(tmp_path)


def test_error_images_without_class_folders(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.jpg")
    with pytest.raises(ValueError, match=r"holds 3 image files but no class subfolders"):
        build_dataset(tmp_path)
    flat_split = tmp_path / "ds"
    _save(flat_split / "train" / "x.png")
    _save(flat_split / "other" / "y.png")
    with pytest.raises(ValueError, match=r"ds/train holds image files but no class subfolders"):
        build_dataset(flat_split, split="train")


def test_error_unknown_split_lists_found_splits(cifar_root):
    with pytest.raises(ValueError, match=r"split 'val' not found.*splits found: \['test', 'train'\]"):
        build_dataset(cifar_root, split="val")


def test_error_ambiguous_split(cifar_root):
    with pytest.raises(ValueError, match=r"several splits \['test', 'train'\]: pass split="):
        build_dataset(cifar_root / "cifar10-jpeg")


def test_error_split_requested_without_split_folders(cifar_root):
    with pytest.raises(ValueError, match=r"split 'train' requested.*no split folders.*'airplane'"):
        build_dataset(cifar_root / "cifar10-jpeg" / "test", split="train")


def test_split_next_to_flat_folder(tmp_path):
    # ImageNet's raw layout: train/<class>/<image> beside a flat val/<image>.
    _save(tmp_path / "train" / "n01" / "a.png")
    _save(tmp_path / "train" / "n02" / "b.png")
    _save(tmp_path / "val" / "c.png")
    assert build_dataset(tmp_path, split="train").classes == ["n01", "n02"]
    with pytest.raises(ValueError, match=r"mixes split folders \['train'\].*\['val'\] holding images directly"):
        build_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"val holds image files but no class subfolders"):
        build_dataset(tmp_path, split="val")


def test_error_empty_class_folder(tmp_path):
    _save(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folders without images.*\['dog'\]"):
        build_dataset(tmp_path)


def test_error_unsupported_file(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"unsupported dataset file .*data.zip: expected a folder, a .tar"):
        build_dataset(tmp_path / "data.zip")


def test_error_compressed_tar_named_tar(tmp_path, cifar_root):
    bad = tmp_path / "oops.tar"
    with tarfile.open(bad, "w:gz") as tf:
        tf.add(cifar_root / "cifar10-jpeg" / "test" / "cat", arcname="cat")
    with pytest.raises(ValueError, match=r"not a readable uncompressed tar.*\.tar\.gz or \.tgz"):
        build_dataset(bad)


def test_error_tar_without_images(tmp_path):
    path = tmp_path / "texts.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a/b.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match=r"no images found in .*texts.tar"):
        build_dataset(path)


# ----------------------------------------------------------------------------------------------
# Uncompressed tar (random access) and .tar.gz (extracted once)
# ----------------------------------------------------------------------------------------------

def test_tar_random_access_matches_tarfile_pixels(imagenette_tar):
    ds = build_dataset(imagenette_tar)  # imagenette-224/train/<wnid>/*.JPEG: wrapper + only split
    assert isinstance(ds, TarImageDataset)
    assert len(ds) == 2500 and len(ds.classes) == 10 and ds.classes == sorted(ds.classes)
    assert all(c.startswith("n0") for c in ds.classes)
    assert np.bincount(ds.targets).tolist() == [250] * 10
    picks = [0, 1, 777, 1499, 2499]
    with tarfile.open(imagenette_tar) as tf:
        for i in picks:
            name, label = ds.samples[i]
            assert name.split("/")[-2] == ds.classes[label]
            ref = Image.open(io.BytesIO(tf.extractfile(name).read())).convert("RGB")
            img, got_label = ds[i]
            assert got_label == label
            assert img.size == (224, 224) and np.array_equal(_pixels(img), _pixels(ref))


def test_tar_pickles_and_loads_in_workers(imagenette_tar):
    ds = build_dataset(imagenette_tar, split="train", transform=_to_tensor)
    ds[5]  # opens the file in this process; the handle must not travel
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fh is None and torch.equal(clone[5][0], ds[5][0])
    picks = [3, 400, 1000, 1600, 2200, 2499, 0, 1250]
    sub = torch.utils.data.Subset(ds, picks)
    got = [(x, y) for xb, yb in DataLoader(sub, batch_size=2, num_workers=2) for x, y in zip(xb, yb)]
    assert [int(y) for _, y in got] == [ds.targets[i] for i in picks]
    for (x, _), i in zip(got, picks):
        assert torch.equal(x, ds[i][0])


def _make_tgz(cifar_root: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for cls in CIFAR_CLASSES[:3]:
                tf.add(cifar_root / "cifar10-jpeg" / split / cls, arcname=f"mini/{split}/{cls}")
    return path


def test_targz_extracted_once_and_reused(cifar_root, tmp_path, monkeypatch):
    archive = _make_tgz(cifar_root, tmp_path / "mini.tar.gz")
    monkeypatch.setenv("LDAE_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []
    real_extract = ldae.data.archives._extract_regular_files
    monkeypatch.setattr(ldae.data.archives, "_extract_regular_files", lambda a, out: (calls.append(a), real_extract(a, out)))
    first = build_dataset(archive, split="train")
    assert first.classes == CIFAR_CLASSES[:3] and len(first) == 60
    extracted = sorted((tmp_path / "cache" / "extracted").iterdir())
    assert len(extracted) == 1 and extracted[0].name.startswith("mini-")  # no temporary left behind
    marker = Path(first.samples[-1][0])
    assert marker.relative_to(extracted[0]).parts[:3] == ("mini", "train", "bird")
    stamp = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    second = build_dataset(archive, split="test")
    assert time.perf_counter() - t0 < 1.0 and len(calls) == 1  # reused, not extracted again
    assert marker.stat().st_mtime_ns == stamp  # not rewritten
    assert sorted((tmp_path / "cache" / "extracted").iterdir()) == extracted
    assert all(p.startswith(str(extracted[0])) for p, _ in second.samples)
    ref = cifar_root / "cifar10-jpeg" / "train" / "bird" / marker.name
    assert marker.read_bytes() == ref.read_bytes()
    # A changed archive (new mtime) is a different cache entry, never a stale one.
    os.utime(archive, ns=(stamp + 10**9, stamp + 10**9))
    assert extract_archive(archive) != extracted[0] and len(calls) == 2


def test_extract_refuses_paths_outside_target(tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("../escape.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="outside the target"):
        extract_archive(evil, tmp_path / "cache")
    assert not (tmp_path / "escape.jpg").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # temporary folder cleaned up


class _Zeros(io.RawIOBase):
    """A stream of n zero bytes, so a big member costs no memory to write."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _bomb(path: Path, members: list[tuple[str, int]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def test_extract_writes_only_images_within_a_size_cap(tmp_path, monkeypatch):
    # a 256 MB non-image member (about 250 KB compressed) is never written: readers use images only
    archive = _bomb(tmp_path / "a.tar.gz", [("d/train/c/blob.bin", 1 << 28), ("d/train/c/x.jpg", 10)])
    assert archive.stat().st_size < 1 << 20
    out = extract_archive(archive, tmp_path / "cache")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["d/train/c/x.jpg"]
    # image members beyond 100x the archive's size stop the extraction, naming the archive
    bomb = _bomb(tmp_path / "b.tar.gz", [("d/train/c/big.jpg", 200 << 20)])
    with pytest.raises(ValueError, match=rf"{bomb}: its images exceed 67,108,864 bytes extracted .* at member 'd/train/c/big.jpg'"):
        extract_archive(bomb, tmp_path / "cache")
    monkeypatch.setenv("LDAE_EXTRACT_MAX_BYTES", str(300 << 20))  # the user's explicit allowance
    assert (extract_archive(bomb, tmp_path / "cache") / "d/train/c/big.jpg").stat().st_size == 200 << 20


# ----------------------------------------------------------------------------------------------
# WebDataset shards
# ----------------------------------------------------------------------------------------------

def test_expand_urls():
    assert expand_urls("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_urls("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_urls(["x.tar", "y-{1..2}.tar"]) == ["x.tar", "y-1.tar", "y-2.tar"]
    with pytest.raises(ValueError, match="descending"):
        expand_urls("s-{5..1}.tar")


def test_shards_round_trip_copies_files_byte_for_byte(cifar_root, tmp_path):
    ds = build_dataset(cifar_root, split="test")
    paths = write_shards(ds, str(tmp_path / "sh" / "test-%06d.tar"), max_count=64)
    assert [Path(p).name for p in paths] == [f"test-{i:06d}.tar" for i in range(4)]  # ceil(200 / 64)
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == [Path(p).name for p in paths]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert {Path(p).stat().st_mode & 0o777 for p in paths} == {0o666 & ~umask}  # what open() would give, not mkstemp's 0600
    with tarfile.open(paths[0]) as tf:
        names = tf.getnames()
        assert names[:2] == ["000000000.jpg", "000000000.cls"]
        assert tf.extractfile(names[0]).read() == Path(ds.samples[0][0]).read_bytes()
    stream = ShardDataset(str(tmp_path / "sh" / "test-{000000..000003}.tar"), shuffle_buffer=0)
    got = list(stream)
    assert [y for _, y in got] == ds.targets
    for i in (0, 99, 199):
        assert np.array_equal(_pixels(got[i][0]), _pixels(ds[i][0]))


def test_shards_from_tensors_are_lossless(tmp_path):
    src = _IndexImages(10, size=5)
    paths = write_shards(src, str(tmp_path / "t-%03d.tar"), max_count=4)
    assert len(paths) == 3
    got = list(ShardDataset(paths, transform=_to_tensor, shuffle_buffer=0))
    assert [y for _, y in got] == list(range(10))
    for (x, y) in got:
        assert torch.equal(x, src[y][0])


@pytest.fixture(scope="module")
def index_shards(tmp_path_factory):
    """40 samples whose label is their index, in 8 shards of 5."""
    out = tmp_path_factory.mktemp("shards")
    return write_shards(_IndexImages(40), str(out / "s-%02d.tar"), max_count=5)


def test_shards_split_over_ranks_and_workers_disjoint_and_complete(index_shards):
    seen: list[int] = []
    for rank in range(2):
        ds = ShardDataset(index_shards, transform=_to_tensor, shuffle_buffer=16, seed=3, rank=rank, world_size=2)
        ds.set_epoch(1)
        per_worker = [ds.shards_for(w, 2) for w in range(2)]
        assert not set(per_worker[0]) & set(per_worker[1]) and len(per_worker[0]) == 2
        labels = [int(y) for _, yb in DataLoader(ds, batch_size=4, num_workers=2) for y in yb]
        assert sorted(labels) == sorted(int(Path(s).stem[-2:]) * 5 + k for ws in per_worker for s in ws
                                        for k in range(5))
        seen += labels
    assert sorted(seen) == list(range(40))  # every sample exactly once over the 2 ranks x 2 workers


def test_shards_set_epoch_reshuffles_deterministically(index_shards):
    def order(epoch: int, seed: int = 0) -> list[int]:
        ds = ShardDataset(index_shards, shuffle_buffer=8, seed=seed, rank=0, world_size=1)
        ds.set_epoch(epoch)
        return [y for _, y in ds]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(1)) == list(range(40))
    assert order(0) != order(0, seed=1)
    ordered = ShardDataset(index_shards, shuffle_buffer=0)
    ordered.set_epoch(5)
    assert [y for _, y in ordered] == list(range(40))


def test_shard_errors(index_shards, tmp_path):
    with pytest.raises(ValueError, match=r"8 shards cannot be split over 9 ranks"):
        ShardDataset(index_shards, rank=0, world_size=9)
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards do not exist"):
        ShardDataset([index_shards[0], str(tmp_path / "missing.tar")])
    with pytest.raises(ValueError, match=r"expected 0 <= rank < world_size"):
        ShardDataset(index_shards, rank=2, world_size=2)
    with pytest.raises(ValueError, match="one printf integer field"):
        write_shards(_IndexImages(2), str(tmp_path / "fixed.tar"))
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("000.cls")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ValueError, match=r"sample '000' has no image member.*found extensions \['cls'\]"):
        list(ShardDataset(str(bad), shuffle_buffer=0))


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def test_build_transform_center_crop_and_normalization():
    img = Image.new("RGB", (300, 200), (255, 0, 51))
    t = build_transform(224, train=False, mean=MEAN, std=STD, crop="random_resized", hflip=True, crop_pct=0.875)
    assert "Resize(size=256" in repr(t) and "RandomResizedCrop" not in repr(t) and "Flip" not in repr(t)
    x = t(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expect = (torch.tensor([255, 0, 51]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 100, 100], expect, atol=1e-5)
    # Center crop of a horizontal ramp keeps the middle columns.
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).convert("RGB")
    mid = build_transform(128, False, (0, 0, 0), (1, 1, 1))(ramp)  # resize 256 -> 128 then no crop
    assert mid.shape == (3, 128, 128) and abs(mid[0, 0, 0].item() * 255 - 0.5) < 2
    tight = build_transform(128, False, (0, 0, 0), (1, 1, 1), crop_pct=0.5)(ramp)  # 256 -> crop middle 128
    assert abs(tight[0, 0, 0].item() * 255 - 64) < 1.01


def test_center_crop_is_the_transform_evaluation_uses(cifar_root):
    """Pretraining's center crop and the probe's timm eval transform give the same pixels, bit for bit."""
    from timm.data import create_transform

    imgs = [Image.open(p).convert("RGB") for p in sorted((cifar_root / "cifar10-jpeg" / "train" / "cat").iterdir())[:4]]
    imgs.append(Image.new("RGB", (300, 200), (255, 0, 51)))
    for size, pct, interp in ((32, 1.0, "bicubic"), (24, 0.875, "bilinear"), (64, 1.0, "bicubic")):
        ours = build_transform(size, train=False, mean=MEAN, std=STD, crop_pct=pct, interpolation=interp)
        evaluation = create_transform(size, is_training=False, interpolation=interp, mean=MEAN, std=STD, crop_pct=pct)
        assert all(torch.equal(ours(im), evaluation(im)) for im in imgs), (size, pct, interp)
    flipped = build_transform(32, train=True, mean=MEAN, std=STD, hflip=True)
    torch.manual_seed(0)
    outs = [flipped(imgs[0]) for _ in range(16)]
    plain = build_transform(32, train=False, mean=MEAN, std=STD)(imgs[0])
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, plain.flip(-1)) for o in outs)


def test_build_transform_train_and_errors():
    t = build_transform(64, train=True, mean=MEAN, std=STD, crop="random_resized", hflip=True)
    assert "RandomResizedCrop(size=(64, 64), scale=(0.2, 1.0)" in repr(t) and "RandomHorizontalFlip" in repr(t)
    assert t(Image.new("RGB", (100, 80))).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="crop must be 'center' or 'random_resized', got 'middle'"):
        build_transform(64, True, MEAN, STD, crop="middle")
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]"):
        build_transform(64, True, MEAN, STD, crop_pct=1.5)
    for train in (True, False):  # timm's center crop has no 'nearest-exact': refused by name on both paths
        with pytest.raises(ValueError, match="interpolation must be one of nearest, bilinear, bicubic, box, hamming, lanczos, got 'nearest-exact'"):
            build_transform(64, train, MEAN, STD, crop="random_resized", interpolation="nearest-exact")


# ----------------------------------------------------------------------------------------------
# GPU-resident path (run on CPU tensors)
# ----------------------------------------------------------------------------------------------

def test_load_uint8_matches_pil_decoding(cifar_root):
    images, labels = load_uint8(cifar_root, "test", num_workers=0)
    ds = build_dataset(cifar_root, split="test")
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert labels.tolist() == ds.targets
    for i in (0, 57, 199):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), _pixels(Image.open(ds.samples[i][0])))
    sub, sub_labels = load_uint8(cifar_root, "test", img_size=16, max_images=30, num_workers=0)
    assert sub.shape == (30, 3, 16, 16) and len(set(sub_labels.tolist())) > 3  # spread over classes


def test_load_uint8_from_dataset_object():
    images, labels = load_uint8(_IndexImages(7), num_workers=0, batch_size=3)
    assert labels.tolist() == list(range(7))
    assert torch.equal(images[5], _IndexImages(7)[5][0])


def test_gpu_augment_eval_is_plain_normalization():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    aug = GPUAugment(32, MEAN, STD).eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(aug(x), (x.float() / 255 - mean) / std)
    big = aug(torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8))
    assert big.shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="expected a uint8"):
        aug(x.float())


def test_gpu_augment_full_crop_flip_gives_image_or_mirror():
    x = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    aug = GPUAugment(24, MEAN, STD, scale=(1.0, 1.0), hflip=True).train()
    out = aug(x, generator=torch.Generator().manual_seed(0))
    plain, mirror = aug.normalize(x), aug.normalize(x.flip(-1))
    same = [(o - p).abs().max().item() < 1e-4 for o, p in zip(out, plain)]
    flipped = [(o - m).abs().max().item() < 1e-4 for o, m in zip(out, mirror)]
    assert all(s != f for s, f in zip(same, flipped))  # each sample is exactly one of the two
    assert 0 < sum(flipped) < 16


def test_gpu_augment_crops_the_sampled_box():
    # Pixel value = 8 * column: the output's column values reveal which input columns were cropped.
    col = (torch.arange(32) * 8).to(torch.uint8)
    x = col.view(1, 1, 1, 32).expand(6, 3, 32, 32).contiguous()
    aug = GPUAugment(32, (0, 0, 0), (1, 1, 1), scale=(0.25, 0.25), ratio=(1, 1), hflip=False).train()
    g = torch.Generator().manual_seed(1)
    boxes = aug.crop_boxes(6, 32, 32, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert (boxes[:, 2:] == 16).all()  # 25% of the area, square
    out = aug(x, generator=g) * 255  # (6, 3, 32, 32) back to pixel values
    for o, (x0, _, w, _) in zip(out, boxes.tolist()):
        row = o[0, 0]
        assert torch.all(row[1:] >= row[:-1] - 1e-4)  # not mirrored
        assert row[0] >= 8 * x0 - 4 and row[-1] <= 8 * (x0 + w - 1) + 4  # inside the box
        assert row[-1] - row[0] > 8 * (w - 2)  # spans the box


def test_gpu_batch_loader_rank_sharding():
    n, bs = 103, 10
    images = torch.arange(n).view(n, 1, 1, 1).expand(n, 1, 2, 2).to(torch.int64)
    labels = torch.arange(n)
    per_rank = []
    for rank in range(3):
        loader = GPUBatchLoader(images, labels, bs, seed=4, rank=rank, world_size=3)
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == len(loader) == 3  # 34 per rank -> 3 full batches
        for x, y in batches:
            assert x.shape == (bs, 1, 2, 2) and torch.equal(x[:, 0, 0, 0], y)  # labels follow images
        per_rank.append(loader.indices())
        assert torch.equal(torch.cat([y for _, y in batches]), loader.indices()[:30])
    flat = torch.cat(per_rank)
    assert len(set(flat.tolist())) == 3 * 34  # disjoint across ranks
    one = GPUBatchLoader(images, labels, bs, seed=4, rank=0, world_size=1)
    one.set_epoch(2)
    assert torch.equal(flat, one.indices()[:102])  # chunks of the same permutation
    one.set_epoch(3)
    assert not torch.equal(flat, one.indices()[:102])
    keep = GPUBatchLoader(images, labels, bs, shuffle=False, drop_last=False)
    assert len(keep) == 11 and torch.equal(torch.cat([y for _, y in keep]), labels)
    with pytest.raises(ValueError, match="no full batch"):
        GPUBatchLoader(images[:5], labels[:5], 10)

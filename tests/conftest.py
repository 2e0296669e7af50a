"""Shared test fixtures. The real data lives read-only in ``<repo>/../shared/data`` (see its README)."""
import os

# Before anything imports huggingface_hub: never wait on network retries in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one thread (modules that train tiny models use it for all their tests)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``, or skip when this checkout has no shared data next to it."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (expected next to the repository)")
    return path


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``cifar10-jpeg/{train,test}/<class>/*.jpg``: the first 20 images of each class
    and split, streamed out of the archive (about a second) instead of extracting all 60,000."""
    archive = shared_data / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    out = tmp_path_factory.mktemp("cifar")
    per_class = 20
    counts: dict[str, int] = {}
    with tarfile.open(archive, mode="r|gz") as tf:
        for m in tf:
            parts = m.name.split("/")  # cifar10-jpeg/<split>/<class>/<file>
            if not m.isfile() or len(parts) != 4:
                continue
            key = f"{parts[1]}/{parts[2]}"
            if counts.get(key, 0) >= per_class:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = out / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            target.write_bytes(src.read())
            if len(counts) == 2 * len(CIFAR_CLASSES) and all(v == per_class for v in counts.values()):
                break
    return out


@pytest.fixture(scope="session")
def imagenette_tar(shared_data: Path) -> Path:
    """The uncompressed Imagenette subset: ``imagenette-224/train/<wnid>/*.JPEG``, 2,500 images."""
    path = shared_data / "imagenette-224-train2500.tar"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path

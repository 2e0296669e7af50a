"""``.tar.gz`` archives extracted once (images only, size-capped) into a cache folder that readers reuse."""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
import logging

from ldae.data.image_decode import is_image_name

__all__ = ["default_cache_dir", "extract_archive", "extract_limit", "normalize_member", "EXTRACT_ENV", "EXTRACT_RATIO"]

_logger = logging.getLogger(__name__)

EXTRACT_RATIO = 100  # default cap on the extracted bytes, as a multiple of the archive's size


EXTRACT_ENV = "LDAE_EXTRACT_MAX_BYTES"


def normalize_member(name: str) -> str:
    """A tar member name without leading '/' or './' and with '..' resolved."""
    return posixpath.normpath(name).lstrip("/").removeprefix("./")


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
    try:
        with tarfile.open(archive, mode="r|*") as tf:
            for m in tf:
                if not m.isfile() or not is_image_name(posixpath.basename(m.name)):
                    continue
                name = normalize_member(m.name)
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
    except (tarfile.ReadError, EOFError, zlib.error) as e:  # a cut or damaged download
        raise ValueError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); download or copy it again") from None
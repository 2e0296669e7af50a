"""Released files: the weights manifest, integrity checks, and a model name's tokenizer and noise.

``weights/manifest.json`` is the one table of everything this package ships (format
``ldae.weights.v1``)::

    {"format": "ldae.weights.v1",
     "tokenizers": {"<name>": {"file", "sha256", "bytes", "patch_size", "in_chans", "norm_mean",
                               "norm_std", "models": [archs it is the default for], "data", "images",
                               "patches", "img_size", "command", "license"}},
     "weights":    {"<arch>.<tag>": {"file", "sha256", "bytes", "params", "tokenizer", "noise",
                                     "data", "recipe", "device", "minutes", "metrics", "license",
                                     "description", "cfg", "denoiser": {"file", "sha256", "bytes"}}}}

Releasing a checkpoint is one ``weights`` entry plus its file (``ldae export`` prints the entry).
Files are plain safetensors next to the manifest and are checked (size, then sha256) before anything
is read, so a truncated or corrupted copy is refused with a message naming the file.

The folder is ``$LDAE_WEIGHTS_DIR`` when set, else ``ldae/_weights`` inside an installed wheel,
else ``weights/`` at the repository root (a source checkout or an editable install).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from ldae.diffusion.noise import AddLatentNoise, LatentNoise
from ldae.diffusion.schedules import build_schedule
from ldae.models.sizes import SIZES, get_size
from ldae.tokenizers.pca import PatchPCA
from ldae.utils.io import sha256_file

__all__ = [
    "MANIFEST_FORMAT", "WEIGHTS_DIR_ENV", "ARCH_PREFIX", "MAX_FILE_BYTES", "MAX_DIR_BYTES",
    "EXPORT_CONFIG_KEY", "EXPORT_TOKENIZER_FILE", "WeightsIntegrityError", "NoiseConfig", "TokenizerEntry",
    "WeightsEntry", "Manifest", "weights_dir", "load_manifest", "verify_file", "split_name",
    "no_weights_message", "get_tokenizer", "get_noise_config", "get_noise_transform",
]

MANIFEST_FORMAT = "ldae.weights.v1"
WEIGHTS_DIR_ENV = "LDAE_WEIGHTS_DIR"
ARCH_PREFIX = "ldae_vit_"
# Encoders of any other shape (custom sizes) register as this architecture, the shape in model args;
# without shape args it builds CUSTOM_DEFAULT_SIZE. Weights of such shapes live in export folders.
CUSTOM_ARCH = ARCH_PREFIX + "custom"
CUSTOM_DEFAULT_SIZE = "micro_patch4_32"
UNTRAINED_TAG = "untrained"
MAX_FILE_BYTES = 25 * 2**20  # repository policy: per shipped file ...
MAX_DIR_BYTES = 60 * 2**20  # ... and for the whole weights/ folder
# An ``ldae export`` folder: this key of config.json describes the noise, this file is the tokenizer.
EXPORT_CONFIG_KEY = "ldae"
EXPORT_TOKENIZER_FILE = "tokenizer.safetensors"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsIntegrityError(RuntimeError):
    """A shipped file does not match its manifest entry (truncated, corrupted or replaced)."""


# ---------------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class NoiseConfig:
    """How a model was pretrained to see noise: the level used for features and the latent noise itself."""

    t: int = 10
    d: int | None = None  # None: the size's default_d
    whiten: bool = True
    noise_space: str = "latent"
    schedule: str = "linear_sigma"
    num_levels: int = 1000
    latent_scale: str | None = None  # 'whiten' / 'raw' / 'global'; None (records before it): from ``whiten``

    @property
    def scale(self) -> str:
        """The latent scale (:data:`ldae.diffusion.noise.LATENT_SCALES`) this noise used."""
        return self.latent_scale or ("whiten" if self.whiten else "raw")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "noise") -> "NoiseConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown noise keys {sorted(unknown)}; expected a subset of {[f.name for f in fields(cls)]}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenizerEntry:
    """A shipped patch-PCA artifact and its provenance."""

    name: str
    file: str
    sha256: str
    bytes: int
    patch_size: int
    in_chans: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    models: tuple[str, ...] = ()
    data: str = ""
    images: int = 0
    patches: int = 0
    img_size: int = 0
    command: str = ""
    license: str = ""


@dataclass(frozen=True)
class WeightsEntry:
    """A released checkpoint (an exported fixed-t encoder) and how it was made."""

    name: str  # "<arch>.<tag>"
    file: str
    sha256: str
    bytes: int
    params: int
    tokenizer: str | None = None
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    data: str = ""
    recipe: str = ""
    device: str = ""
    minutes: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    license: str = "apache-2.0"
    description: str = ""
    cfg: Mapping[str, Any] = field(default_factory=dict)  # pretrained-cfg overrides (e.g. crop_pct)
    # Optional full pretraining model (encoder + decoder, for denoising figures / continued
    # pretraining): {"file", "sha256", "bytes"}, read by :mod:`ldae.release.denoiser`.
    denoiser: Mapping[str, Any] | None = None

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of one weights folder."""

    root: Path
    tokenizers: Mapping[str, TokenizerEntry]
    weights: Mapping[str, WeightsEntry]

    def tags(self, arch: str) -> list[str]:
        """Tags with weights for ``arch``, in manifest order (the first is timm's default)."""
        return [e.tag for e in self.weights.values() if e.arch == arch]

    def default_tokenizer(self, arch: str) -> TokenizerEntry | None:
        """The tokenizer an architecture uses when no released checkpoint names one."""
        return next((t for t in self.tokenizers.values() if arch in t.models), None)

    def path(self, entry: TokenizerEntry | WeightsEntry) -> Path:
        return self.root / entry.file


# ---------------------------------------------------------------------------------------------- loading
def _package_weights_dirs() -> list[Path]:
    here = Path(__file__).resolve().parents[1]  # the ldae package
    # An installed wheel carries weights/ as ldae/_weights (setup.cfg); a source checkout or an
    # editable install reads weights/ at the repository root.
    return [here / "_weights", here.parent / "weights"]


def weights_dir() -> Path:
    """The folder holding ``manifest.json`` (see module docstring for the search order)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidates = _package_weights_dirs()
    return next((p for p in candidates if (p / "manifest.json").is_file()), candidates[-1])


def _check_file_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.endswith(".safetensors") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"{where}: 'file' must be a plain .safetensors file name in the weights folder, got {name!r}")
    return name


def _check_common(entry: Mapping[str, Any], where: str, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    _check_file_name(entry["file"], where)
    if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
        raise ValueError(f"{where}: 'sha256' must be 64 lower-case hex digits, got {entry['sha256']!r}")
    if not isinstance(entry["bytes"], int) or not 0 < entry["bytes"] <= MAX_FILE_BYTES:
        raise ValueError(f"{where}: 'bytes' must be an int in (0, {MAX_FILE_BYTES}] (the per-file cap), got {entry['bytes']!r}")


def _parse_tokenizer(name: str, raw: Mapping[str, Any], where: str) -> TokenizerEntry:
    _check_common(raw, where, ("file", "sha256", "bytes", "patch_size", "in_chans", "norm_mean", "norm_std"))
    known = {f.name for f in fields(TokenizerEntry)} - {"name"}
    if set(raw) - known:
        raise ValueError(f"{where}: unknown keys {sorted(set(raw) - known)}")
    data = dict(raw)
    for k in ("norm_mean", "norm_std", "models"):
        data[k] = tuple(data.get(k, ()))
    return TokenizerEntry(name=name, **data)


def _parse_weights(name: str, raw: Mapping[str, Any], tokenizers: Mapping[str, TokenizerEntry], where: str) -> WeightsEntry:
    arch, _, tag = name.partition(".")
    if not tag or arch[len(ARCH_PREFIX):] not in SIZES or not arch.startswith(ARCH_PREFIX):
        raise ValueError(f"{where}: weights keys must be '<arch>.<tag>' with arch in {[ARCH_PREFIX + s for s in SIZES]}")
    if tag == UNTRAINED_TAG:
        raise ValueError(f"{where}: the tag {UNTRAINED_TAG!r} is reserved for architectures without weights")
    _check_common(raw, where, ("file", "sha256", "bytes", "params"))
    known = {f.name for f in fields(WeightsEntry)} - {"name"}
    if set(raw) - known:
        raise ValueError(f"{where}: unknown keys {sorted(set(raw) - known)}")
    data = dict(raw)
    if data.get("tokenizer") is not None and data["tokenizer"] not in tokenizers:
        raise ValueError(f"{where}: tokenizer {data['tokenizer']!r} is not in the manifest's tokenizers {sorted(tokenizers)}")
    data["noise"] = NoiseConfig.from_dict(data.get("noise", {}), where=f"{where}.noise")
    if data.get("denoiser") is not None:
        _check_common(data["denoiser"], f"{where}.denoiser", ("file", "sha256", "bytes"))
    return WeightsEntry(name=name, **data)


_CACHE: dict[tuple[str, str], Manifest] = {}


def load_manifest(root: str | os.PathLike | None = None) -> Manifest:
    """Parse and validate ``<root>/manifest.json`` (default :func:`weights_dir`); hashes nothing."""
    root = Path(root) if root is not None else weights_dir()
    path = root / "manifest.json"
    if not path.is_file():
        hint = f" (set by ${WEIGHTS_DIR_ENV})" if os.environ.get(WEIGHTS_DIR_ENV) else ""
        raise FileNotFoundError(f"weights manifest not found: {path}{hint}")
    text = path.read_text()
    key = (str(path.resolve()), text)  # keyed by content: an edited manifest is never served stale
    if key in _CACHE:
        return _CACHE[key]
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: expected a manifest with format {MANIFEST_FORMAT!r}")
    tokenizers = {n: _parse_tokenizer(n, e, f"{path}: tokenizers[{n!r}]") for n, e in raw.get("tokenizers", {}).items()}
    weights = {n: _parse_weights(n, e, tokenizers, f"{path}: weights[{n!r}]") for n, e in raw.get("weights", {}).items()}
    manifest = Manifest(root=root, tokenizers=tokenizers, weights=weights)
    _CACHE[key] = manifest
    return manifest


def verify_file(path: str | os.PathLike, sha256: str, nbytes: int, what: str) -> Path:
    """Return ``path`` if its size and sha256 match the manifest; raise before anything reads it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    size = path.stat().st_size
    if size != nbytes:
        raise WeightsIntegrityError(
            f"{what}: {path} has {size} bytes, the manifest expects {nbytes} (truncated or incomplete copy); nothing was loaded"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise WeightsIntegrityError(
            f"{what}: {path} has sha256 {actual}, the manifest expects {sha256} (corrupted or replaced file); nothing was loaded"
        )
    return path


# ---------------------------------------------------------------------------------------------- names
def split_name(name: str) -> tuple[str, str | None]:
    """``'ldae_vit_base.tag'`` -> (``'ldae_vit_base'``, ``'tag'``); raises for names that are not l-DAE models."""
    arch, _, tag = name.partition(".")
    if arch == CUSTOM_ARCH:
        return arch, (tag or None)
    if not arch.startswith(ARCH_PREFIX) or arch[len(ARCH_PREFIX):] not in SIZES:
        raise ValueError(
            f"unknown l-DAE model {name!r}; expected one of {[ARCH_PREFIX + s for s in SIZES]} "
            "(optionally '.<tag>'), 'hf-hub:<org>/<name>' or 'local-dir:<export dir>'"
        )
    return arch, (tag or None)


def no_weights_message(name: str, manifest: Manifest | None = None) -> str:
    """Why ``name`` cannot load pretrained weights, which tags can, and how to supply weights."""
    manifest = manifest or load_manifest()
    arch = name.split(".", 1)[0]
    have = sorted(manifest.weights)
    lines = [f"No pretrained weights ship for {name.removesuffix('.' + UNTRAINED_TAG)}."]
    if have:
        lines.append("Tags with weights: " + ", ".join(have) + ".")
    else:
        lines.append(f"No l-DAE tag has weights yet in this release (manifest: {manifest.root / 'manifest.json'}).")
    lines += [
        "Load weights you have with:",
        f"  timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay=dict(file='/path/model.safetensors'))",
        "  timm.create_model('hf-hub:<org>/<name>', pretrained=True)  # an `ldae export` upload; `import ldae` first",
        "  timm.create_model('local-dir:/path/to/export', pretrained=True)",
        "Make them from a pretraining checkpoint with: ldae export <checkpoint.pth> --out /path/to/export",
        "Use pretrained=False for a random initialisation.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- tokenizer + noise
def _export_files(name: str) -> tuple[dict[str, Any], Path | None]:
    """The ``ldae`` section of an export's config.json and its tokenizer file (None if it has none)."""
    source, _, ref = name.partition(":")
    if source == "local-dir":
        folder = Path(ref).expanduser()
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{name}: no config.json in {folder} (expected an `ldae export` folder)")
        fetch = lambda f: folder / f  # noqa: E731
    else:
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = ref.partition("@")
        fetch = lambda f: Path(hf_hub_download(repo_id, f, revision=revision or None))  # noqa: E731
        config_path = fetch("config.json")
    config = json.loads(Path(config_path).read_text())
    section = config.get(EXPORT_CONFIG_KEY)
    if not isinstance(section, dict):
        raise ValueError(f"{name}: config.json has no {EXPORT_CONFIG_KEY!r} section; it was not written by `ldae export`")
    tok = section.get("tokenizer")
    if tok is None:
        return section, None
    path = fetch(tok["file"])
    return section, verify_file(path, tok["sha256"], tok["bytes"], f"{name} tokenizer")


def get_tokenizer(name: str) -> PatchPCA:
    """The patch-PCA tokenizer of a model name.

    ``name`` is ``'ldae_vit_<size>'`` (the shipped default tokenizer for its patch size),
    ``'ldae_vit_<size>.<tag>'`` (the tokenizer of that released checkpoint), or an export,
    ``'hf-hub:<org>/<name>'`` / ``'local-dir:<folder>'``. The file is sha256-checked before it is read.
    Raises ``ValueError`` for a pixel-space model or an unknown name.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        _, path = _export_files(name)
        if path is None:
            raise ValueError(f"{name} was pretrained with pixel-space noise and has no tokenizer")
        return PatchPCA.load(path)
    arch, tag = split_name(name)
    if arch == CUSTOM_ARCH:
        raise ValueError(f"{name} has no tokenizer of its own: an export folder of a custom size carries it "
                         "(ldae.get_tokenizer('local-dir:<folder>')), or fit one with `ldae fit-pca`")
    manifest = load_manifest()
    entry: TokenizerEntry | None
    if tag is not None and tag != UNTRAINED_TAG:
        if name not in manifest.weights:
            raise ValueError(f"unknown tag {name!r}; tags with weights: {sorted(manifest.weights) or 'none yet'}")
        weights = manifest.weights[name]
        if weights.tokenizer is None:
            raise ValueError(f"{name} was pretrained with pixel-space noise and has no tokenizer")
        entry = manifest.tokenizers[weights.tokenizer]
    else:
        entry = manifest.default_tokenizer(arch)
        if entry is None:
            size = SIZES[arch[len(ARCH_PREFIX):]]
            raise ValueError(
                f"no tokenizer ships for {arch} ({size.patch_size}x{size.patch_size}x{size.in_chans} patches); fit one with "
                f"`ldae fit-pca <images> --img-size {size.img_size} --patch-size {size.patch_size} --out pca.safetensors`"
            )
    path = verify_file(manifest.path(entry), entry.sha256, entry.bytes, f"tokenizer {entry.name}")
    return PatchPCA.load(path)


def get_noise_config(name: str) -> NoiseConfig:
    """The :class:`NoiseConfig` a model name was (or, without weights, would be) pretrained with; ``d`` filled in."""
    if name.startswith(("hf-hub:", "local-dir:")):
        section, _ = _export_files(name)
        cfg = NoiseConfig.from_dict(section["noise"], where=f"{name} config.json")
        size = get_size(section["size"])
    else:
        arch, tag = split_name(name)
        manifest = load_manifest()
        size = SIZES[CUSTOM_DEFAULT_SIZE if arch == CUSTOM_ARCH else arch[len(ARCH_PREFIX):]]
        if tag is not None and tag != UNTRAINED_TAG:
            if name not in manifest.weights:
                raise ValueError(f"unknown tag {name!r}; tags with weights: {sorted(manifest.weights) or 'none yet'}")
            cfg = manifest.weights[name].noise
        else:
            cfg = NoiseConfig()
    d = cfg.d if cfg.d is not None else size.default_d
    return NoiseConfig(**{**cfg.to_dict(), "d": d})


def get_noise_transform(
    name: str, t: int | None = None, *, batched: bool = False, generator: torch.Generator | None = None, **overrides: Any
) -> AddLatentNoise | LatentNoise:
    """The latent-noise transform a model name was pretrained with.

    Returns a per-sample :class:`ldae.diffusion.noise.AddLatentNoise` (normalised image (C, H, W) -> noisy image,
    at level ``t`` or a uniform random level when ``t`` is None), or with ``batched=True`` the
    batched :class:`ldae.diffusion.noise.LatentNoise` module. ``overrides`` replace :class:`NoiseConfig` fields
    (e.g. ``d=16``, ``latent_scale='raw'``) for ablation figures.
    """
    base = get_noise_config(name).to_dict()
    if "whiten" in overrides and "latent_scale" not in overrides:
        base["latent_scale"] = None  # an explicit ``whiten`` decides the scale
    cfg = NoiseConfig.from_dict({**base, **overrides}, where="get_noise_transform overrides")
    tokenizer = get_tokenizer(name) if cfg.noise_space == "latent" else None
    noise = LatentNoise(tokenizer, cfg.d, latent_scale=cfg.scale, space=cfg.noise_space,
                        schedule=build_schedule(cfg.schedule, num_levels=cfg.num_levels))
    if batched:
        return noise
    return AddLatentNoise(noise, t=t, generator=generator)


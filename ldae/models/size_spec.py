"""``--model`` values: a name from :data:`ldae.models.sizes.SIZES`, or an inline custom size.

    --model base
    --model custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16

Custom sizes are for ablations (depth, width) and tiny test runs; the size table stays the one place
that defines the published sizes. Keys: ``img`` (image side), ``patch``, ``dim`` (width), ``enc`` and
``dec`` (blocks), ``heads``, and optionally ``d`` (the default latent dimension, else min(16, D) with
D = patch * patch * 3), ``mlp`` (MLP ratio, default 4) and ``act`` (MLP activation, ``gelu_tanh`` by
default or ``gelu``).
"""
from __future__ import annotations

from ldae.models.sizes import ACTIVATIONS, SIZES, ModelSize

__all__ = ["parse_model_spec", "format_model_spec", "CUSTOM_PREFIX"]

CUSTOM_PREFIX = "custom:"
_KEYS = {"img": "img_size", "patch": "patch_size", "dim": "embed_dim", "enc": "enc_depth", "dec": "dec_depth",
         "heads": "num_heads", "d": "default_d", "mlp": "mlp_ratio", "act": "act"}
_REQUIRED = ("img", "patch", "dim", "enc", "dec", "heads")
_EXAMPLE = "custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16"


def parse_model_spec(spec: str) -> ModelSize:
    """The :class:`ModelSize` a ``--model`` value names; ``ValueError`` (listing what is accepted) otherwise."""
    if spec in SIZES:
        return SIZES[spec]
    if not spec.startswith(CUSTOM_PREFIX):
        raise ValueError(f"unknown model {spec!r}: expected one of {sorted(SIZES)} or an inline size like {_EXAMPLE!r}")
    fields: dict[str, float | str] = {}
    for item in filter(None, spec[len(CUSTOM_PREFIX):].split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise ValueError(f"bad item {item!r} in model spec {spec!r}: expected key=value with keys {sorted(_KEYS)}")
        if key == "act":
            if value not in ACTIVATIONS:
                raise ValueError(f"bad value in {item!r} of model spec {spec!r}: expected one of {ACTIVATIONS}")
            fields[key] = value
            continue
        try:
            fields[key] = float(value) if key == "mlp" else int(value)
        except ValueError as e:
            raise ValueError(f"bad value in {item!r} of model spec {spec!r}: expected a number") from e
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"model spec {spec!r} lacks {missing}; example: {_EXAMPLE!r}")
    img, patch, dim, heads = (int(fields[k]) for k in ("img", "patch", "dim", "heads"))
    if min(img, patch, dim, heads, int(fields["enc"]), int(fields["dec"])) < 1:
        raise ValueError(f"model spec {spec!r}: every size must be >= 1")
    if img < patch or img % patch:
        raise ValueError(f"model spec {spec!r}: the image side {img} must be a multiple of the patch size {patch} (and >= it)")
    if dim % heads or dim % 4:
        raise ValueError(f"model spec {spec!r}: width {dim} must be divisible by the {heads} heads and by 4 (sin-cos position embedding)")
    fields.setdefault("d", min(16, patch * patch * 3))
    return ModelSize(**{_KEYS[k]: v for k, v in fields.items()})


def format_model_spec(size: ModelSize) -> str:
    """The ``--model`` value of ``size``: its name when it is a registered size, else its inline ``custom:`` spec."""
    for name, s in SIZES.items():
        if s == size:
            return name
    mlp = "" if size.mlp_ratio == 4.0 else f",mlp={size.mlp_ratio:g}"
    act = "" if size.act == "gelu_tanh" else f",act={size.act}"
    return (f"{CUSTOM_PREFIX}img={size.img_size},patch={size.patch_size},dim={size.embed_dim},enc={size.enc_depth},"
            f"dec={size.dec_depth},heads={size.num_heads},d={size.default_d}{mlp}{act}")

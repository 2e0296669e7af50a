"""The l-DAE model's configuration: the fields that describe a model, and the model they build.

One dataclass names every constructor choice of :class:`~ldae.models.ldae.LDAE` that a run can make,
so a pretraining config, a checkpoint's stored ``args`` and a denoiser file all rebuild exactly the
model they hold. The ``ldae`` command's model flags (:mod:`ldae.cli.model_flags`) are these fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ldae.diffusion.schedules import build_schedule
from ldae.models.ldae import LDAE
from ldae.tokenizers.registry import Tokenizer
from ldae.utils.config import Config

__all__ = ["ModelConfig", "build_model", "saved_model_args", "MODEL_FIELDS", "MODEL_ARG_NAMES", "TRAJECTORY_ARG_DEFAULTS"]

# Model fields added with the trajectory switches (docs/trajectory.md). Args saved before them lack
# these names; the defaults, which are l-DAE's, rebuild exactly the model those args describe.
TRAJECTORY_ARG_DEFAULTS: dict[str, str] = {"input_space": "image", "target": "image"}


@dataclasses.dataclass
class ModelConfig(Config):
    """What an l-DAE is built from (defaults: the paper's l-DAE with a ViT-1/2L encoder).

    model: a size name of :data:`ldae.models.sizes.SIZES` or an inline ``custom:...`` size
    (:mod:`ldae.models.size_spec`); d: latent dimension of the noise (None: the size's);
    latent_scale: 'whiten' | 'raw' | 'global'; noise_space: 'latent' | 'pixel'; schedule: a name of
    :data:`ldae.diffusion.schedules.SCHEDULES` with ``num_levels`` levels; tail_weight: Eq. 4's weight
    of the dimensions beyond d; enc_depth: encoder blocks (None: half); cond_ratio: conditioning width
    / model width; input_space: 'image' | 'latent'; target: 'image' | 'decoded' | 'z0' | 'eps'.
    """

    model: str = "half_large"
    d: int | None = None
    latent_scale: str = "whiten"
    noise_space: str = "latent"
    schedule: str = "linear_sigma"
    num_levels: int = 1000
    tail_weight: float = 0.1
    enc_depth: int | None = None
    cond_ratio: float = 0.25
    input_space: str = "image"
    target: str = "image"

    @staticmethod
    def from_saved(saved: Mapping[str, Any]) -> "ModelConfig":
        """The model config of saved args (a checkpoint's, a denoiser file's, a run config's dict), in
        today's names (see :func:`saved_model_args`); other keys are ignored. ``ValueError`` when a
        model field is missing: a default would silently build another model than the one saved."""
        values = saved_model_args(saved)
        missing = [k for k in MODEL_FIELDS if k not in values]
        if missing:
            raise ValueError(f"saved args lack the model flags {missing} (pass a checkpoint's args)")
        return ModelConfig.from_dict(values)

    def build(self, tokenizer: Tokenizer | None) -> LDAE:
        """The :class:`LDAE` this config describes (fresh weights from torch's global RNG)."""
        return LDAE(
            self.model, tokenizer, d=self.d, latent_scale=self.latent_scale, noise_space=self.noise_space,
            schedule=build_schedule(self.schedule, num_levels=self.num_levels), tail_weight=self.tail_weight,
            enc_depth=self.enc_depth, cond_ratio=self.cond_ratio, input_space=self.input_space, target=self.target,
        )


MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))
# the names every saved args hold (those added later take their defaults, see saved_model_args)
MODEL_ARG_NAMES: tuple[str, ...] = tuple(k for k in MODEL_FIELDS if k not in TRAJECTORY_ARG_DEFAULTS)


def saved_model_args(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Saved args (a checkpoint's, a denoiser file's) in today's names: fields added since take their
    defaults, and ``whiten`` (args saved before ``latent_scale``) becomes ``latent_scale``."""
    out = {**TRAJECTORY_ARG_DEFAULTS, **saved}
    whiten = out.pop("whiten", True)
    if out.get("latent_scale") is None:
        out["latent_scale"] = "whiten" if whiten else "raw"
    return out


def build_model(config: ModelConfig | Mapping[str, Any] | Any, tokenizer: Tokenizer | None) -> LDAE:
    """The :class:`LDAE` described by a :class:`ModelConfig` (or a config extending it), by saved args
    (a mapping, as checkpoints store them), or by any object whose attributes are those fields."""
    if isinstance(config, ModelConfig):
        return config.build(tokenizer)
    values = config if isinstance(config, Mapping) else vars(config)
    return ModelConfig.from_saved(values).build(tokenizer)

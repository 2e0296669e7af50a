"""The model flags of every command that builds an l-DAE: the fields of :class:`~ldae.models.model_config.ModelConfig`."""
from __future__ import annotations

import argparse

from ldae.diffusion.noise import INPUT_SPACES, LATENT_SCALES, NOISE_SPACES
from ldae.diffusion.schedules import SCHEDULES
from ldae.diffusion.targets import TARGETS
from ldae.models.model_config import ModelConfig
from ldae.models.size_spec import parse_model_spec
from ldae.models.sizes import SIZES

__all__ = ["add_model_args", "model_spec_arg"]


def model_spec_arg(spec: str) -> str:
    """argparse ``type=`` for ``--model``: validates the value (the string itself is kept for the checkpoint args)."""
    try:
        parse_model_spec(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return spec


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the model flags to ``parser``, with the defaults of :class:`ModelConfig` (the paper's l-DAE)."""
    D = ModelConfig()
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=D.model, type=model_spec_arg, metavar="SIZE",
                   help=f"model size: one of {', '.join(sorted(SIZES))} (default half_large = the paper's ViT-1/2L encoder), "
                   "or an inline size custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16")
    g.add_argument("--d", type=int, default=D.d, help="latent dimension of the noise (default: the size's, 32 for 16x16 patches)")
    g.add_argument("--latent-scale", default=D.latent_scale, choices=LATENT_SCALES,
                   help="scale of the latent the noise is added to: 'whiten' = unit variance per component (default), 'raw' = "
                        "PCA coordinates, 'global' = one scale giving unit average variance (as latent-diffusion VAEs)")
    # Older spellings of two of those scales, kept so existing command lines run unchanged.
    g.add_argument("--whiten", dest="latent_scale", action="store_const", const="whiten", help=argparse.SUPPRESS)
    g.add_argument("--no-whiten", dest="latent_scale", action="store_const", const="raw", help=argparse.SUPPRESS)
    g.add_argument("--noise-space", default=D.noise_space, choices=NOISE_SPACES, help="'pixel' is the classical DAE ablation")
    g.add_argument("--schedule", default=D.schedule, choices=sorted(SCHEDULES), help="noise schedule ('single': sigma = sqrt(1/3))")
    g.add_argument("--num-levels", type=int, default=D.num_levels, help="number of noise levels T")
    g.add_argument("--tail-weight", type=float, default=D.tail_weight, help="Eq. 4 weight of the dimensions beyond d")
    g.add_argument("--enc-depth", type=int, default=D.enc_depth, help="encoder blocks (default: half of the model)")
    g.add_argument("--cond-ratio", type=float, default=D.cond_ratio, help="conditioning width / model width (App. A: 1/4)")
    # The deconstruction trajectory (docs/trajectory.md): the DDM end of it embeds latent tokens and predicts eps.
    g.add_argument("--input-space", default=D.input_space, choices=INPUT_SPACES,
                   help="'latent': embed the tokenizer's noisy d-dim tokens (DiT on a tokenizer, Tab. 2 / Tab. 3 rows 1-3)")
    g.add_argument("--target", default=D.target, choices=TARGETS,
                   help="what is predicted: 'image' (Eq. 4), 'decoded' (inverse-PCA image), 'z0' (Eq. 3), 'eps' (Eq. 2)")
    return parser

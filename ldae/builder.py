"""Command-line flags for the l-DAE model and the model they describe.

One place defines the model's flags, so ``ldae pretrain`` and every other recipe spell them the same
way, and a checkpoint's saved ``args`` rebuild exactly the model it holds.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from .configs import SIZES
from .size_spec import model_spec_arg
from .model import LDAE
from .noise import INPUT_SPACES, LATENT_SCALES, NOISE_SPACES
from .schedule import SCHEDULES, build_schedule
from .targets import TARGETS
from .tokenizers import Tokenizer

__all__ = ["add_model_args", "build_model_from_args", "saved_model_args", "MODEL_ARG_NAMES", "TRAJECTORY_ARG_DEFAULTS"]

MODEL_ARG_NAMES = ("model", "d", "latent_scale", "noise_space", "schedule", "tail_weight", "enc_depth", "cond_ratio", "num_levels")
# Model flags added with the trajectory switches (docs/trajectory.md). Args saved before them lack
# these names; the defaults, which are l-DAE's, rebuild exactly the model those args describe.
TRAJECTORY_ARG_DEFAULTS: dict[str, str] = {"input_space": "image", "target": "image"}


def saved_model_args(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Saved args (a checkpoint's, a denoiser file's) in today's names: flags added since take their
    defaults, and ``whiten`` (args saved before ``--latent-scale``) becomes ``latent_scale``."""
    out = {**TRAJECTORY_ARG_DEFAULTS, **saved}
    whiten = out.pop("whiten", True)
    if out.get("latent_scale") is None:
        out["latent_scale"] = "whiten" if whiten else "raw"
    return out


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the model flags (defaults = the paper's l-DAE) to ``parser``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="half_large", type=model_spec_arg, metavar="SIZE",
                   help=f"model size: one of {', '.join(sorted(SIZES))} (default half_large = the paper's ViT-1/2L encoder), "
                   "or an inline size custom:img=32,patch=4,dim=64,enc=2,dec=2,heads=2,d=16")
    g.add_argument("--d", type=int, default=None, help="latent dimension of the noise (default: the size's, 32 for 16x16 patches)")
    g.add_argument("--latent-scale", default="whiten", choices=LATENT_SCALES,
                   help="scale of the latent the noise is added to: 'whiten' = unit variance per component (default), 'raw' = "
                        "PCA coordinates, 'global' = one scale giving unit average variance (as latent-diffusion VAEs)")
    # Older spellings of two of those scales, kept so existing command lines run unchanged.
    g.add_argument("--whiten", dest="latent_scale", action="store_const", const="whiten", help=argparse.SUPPRESS)
    g.add_argument("--no-whiten", dest="latent_scale", action="store_const", const="raw", help=argparse.SUPPRESS)
    g.add_argument("--noise-space", default="latent", choices=NOISE_SPACES, help="'pixel' is the classical DAE ablation")
    g.add_argument("--schedule", default="linear_sigma", choices=sorted(SCHEDULES), help="noise schedule ('single': sigma = sqrt(1/3))")
    g.add_argument("--num-levels", type=int, default=1000, help="number of noise levels T")
    g.add_argument("--tail-weight", type=float, default=0.1, help="Eq. 4 weight of the dimensions beyond d")
    g.add_argument("--enc-depth", type=int, default=None, help="encoder blocks (default: half of the model)")
    g.add_argument("--cond-ratio", type=float, default=0.25, help="conditioning width / model width (App. A: 1/4)")
    # The deconstruction trajectory (docs/trajectory.md): the DDM end of it embeds latent tokens and predicts eps.
    g.add_argument("--input-space", default="image", choices=INPUT_SPACES,
                   help="'latent': embed the tokenizer's noisy d-dim tokens (DiT on a tokenizer, Tab. 2 / Tab. 3 rows 1-3)")
    g.add_argument("--target", default="image", choices=TARGETS,
                   help="what is predicted: 'image' (Eq. 4), 'decoded' (inverse-PCA image), 'z0' (Eq. 3), 'eps' (Eq. 2)")
    return parser


def build_model_from_args(args: argparse.Namespace, tokenizer: Tokenizer | None) -> LDAE:
    """The :class:`LDAE` that the parsed model flags describe (flags added later default when absent,
    so the saved args of older checkpoints rebuild the same model)."""
    a = saved_model_args(vars(args))
    return LDAE(
        a["model"],
        tokenizer,
        d=a["d"],
        latent_scale=a["latent_scale"],
        noise_space=a["noise_space"],
        schedule=build_schedule(a["schedule"], num_levels=a["num_levels"]),
        tail_weight=a["tail_weight"],
        enc_depth=a["enc_depth"],
        cond_ratio=a["cond_ratio"],
        **{k: a[k] for k in TRAJECTORY_ARG_DEFAULTS},
    )

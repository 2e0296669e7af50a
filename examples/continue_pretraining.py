"""Continue l-DAE pretraining from released weights on your own images.

    python examples/continue_pretraining.py my_photos/ --init ldae_vit_micro_patch4_32.cifar10 --steps 500
    python examples/continue_pretraining.py my_photos/ --init runs/cifar/checkpoint.pth --steps 500

``--init`` names what to start from:

* a pretraining checkpoint (``.pth``) or a denoiser file (``.safetensors``): the whole model, decoder
  included, continues;
* a released tag: it ships the encoder folded at one t, which :func:`ldae.models.warm_start.init_encoder_from_vit`
  unfolds exactly (the encoder computes the release at every t); the decoder starts fresh.

The loop is the pretraining objective itself, ``loss = model(images)`` (latent noise, denoising,
Eq. 4), with AdamW and no weight decay as in the paper. It writes an ``ldae.engine.checkpoint`` that
``ldae export``, ``ldae probe --model`` and ``ldae figures denoise --model`` read. For long runs and
many GPUs, ``ldae pretrain`` is the tool.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import ldae  # noqa: F401  (registers the ldae_vit_* models with timm)
from ldae.data.samples import find_images
from ldae.data.transforms import build_transform
from ldae.engine.checkpoint import save_checkpoint
from ldae.models.ldae import LDAE
from ldae.models.model_config import ModelConfig, build_model
from ldae.models.size_spec import format_model_spec
from ldae.models.sizes import SIZES
from ldae.models.warm_start import init_encoder_from_vit
from ldae.release.denoiser import load_denoiser, released_tags
from ldae.release.manifest import ARCH_PREFIX, get_noise_config, get_tokenizer


class Images(Dataset):
    """Image files -> normalised tensors (the label is unused: pretraining is self-supervised)."""

    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


def build_from_release(tag: str) -> tuple[LDAE, dict]:
    """An LDAE whose encoder is the released backbone ``tag`` (exactly) and whose decoder is new."""
    arch = tag.split(".", 1)[0]
    size = arch[len(ARCH_PREFIX):]
    noise = get_noise_config(tag)  # how the release was pretrained: d, whitening, schedule
    args = ModelConfig(model=size, d=noise.d, latent_scale=noise.scale, noise_space=noise.noise_space,
                       schedule=noise.schedule, num_levels=noise.num_levels).to_dict()  # the rest: l-DAE's defaults
    tokenizer = get_tokenizer(tag) if noise.noise_space == "latent" else None
    model = build_model(args, tokenizer)
    init_encoder_from_vit(model, timm.create_model(tag, pretrained=True))
    return model, args


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files or folders to pretrain on")
    parser.add_argument("--init", default=None, help="checkpoint .pth, denoiser .safetensors or released tag "
                        "(default: the first released tag)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW lr (paper: 1e-4 per 256 images, no weight decay)")
    parser.add_argument("--out", default="runs/continue/checkpoint.pth", help="checkpoint to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    init = args.init or next(iter(released_tags()), None)
    if init is None:
        parser.error("no trained l-DAE weights are released yet: pass --init with a checkpoint .pth or denoiser file")
    if Path(init).suffix in (".pth", ".pt", ".safetensors"):
        model, _ = load_denoiser(init)  # the whole model
        model_args = _args_of(model)
    else:
        model, model_args = build_from_release(init)
    model = model.to(device).train()

    tok = model.tokenizer
    mean, std = (tok.norm_mean, tok.norm_std) if tok is not None else ((0.5,) * 3, (0.5,) * 3)
    transform = build_transform(model.size.img_size, train=True, mean=mean, std=std, crop="random_resized", hflip=True)
    data = Images(find_images(args.images), transform)
    loader = DataLoader(data, batch_size=min(args.batch_size, len(data)), shuffle=True, drop_last=True)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    step, losses = 0, []
    while step < args.steps:
        for x in loader:
            loss = model(x.to(device))  # corrupt in the latent, denoise, Eq. 4
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}/{args.steps}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if step == args.steps:
                break
    out = Path(args.out)
    save_checkpoint({"model": model.state_dict(), "ema": None, "optimizer": opt.state_dict(), "scaler": None,
                     "step": step, "epoch": 0, "args": {**model_args, "init": init},
                     "tokenizer": tok.metadata() if tok is not None else None}, out)
    print(f"continued from {init} for {step} steps on {len(data)} images; wrote {out}")
    return out


def _args_of(model: LDAE) -> dict:
    """The model flags that rebuild ``model`` (the fields of ldae.models.model_config.ModelConfig): a registered size (with
    its encoder split) keeps its name, any other size is written as its inline ``custom:`` spec."""
    size = next((name for name, s in SIZES.items() if dataclasses.replace(s, enc_depth=model.enc_depth,
                                                                          dec_depth=s.depth - model.enc_depth) == model.size),
                format_model_spec(model.size))
    return dict(model=size, d=model.d, latent_scale=model.noise.latent_scale, noise_space=model.noise.space,
                schedule=model.schedule.name, tail_weight=model.tail_weight, enc_depth=model.enc_depth,
                cond_ratio=model.cond_dim / model.size.embed_dim, num_levels=model.schedule.num_levels)


if __name__ == "__main__":
    main()

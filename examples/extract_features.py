"""Features of an l-DAE backbone with plain timm calls: pooled, per token, and from intermediate blocks.

    python examples/extract_features.py                          # bundled sample images
    python examples/extract_features.py photos/ --model ldae_vit_micro_patch4_32.cifar10

An l-DAE backbone is a timm ``VisionTransformer`` (the encoder at a fixed noise level), so everything
below is standard timm; the only l-DAE-specific line is ``import ldae``, which registers the models.
Without ``--model`` the first released tag is used, or a randomly initialised ``ldae_vit_base`` while
no trained weights are released (the shapes are right, the values mean nothing).
"""
from __future__ import annotations

import argparse

import timm
import torch
from timm.data import create_transform, resolve_model_data_config

import ldae  # noqa: F401  (registers the ldae_vit_* models with timm)
from ldae.data.samples import find_images, sample_images
from ldae.release.denoiser import released_tags


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files or folders (default: the bundled samples)")
    parser.add_argument("--model", default=None, help="timm name, e.g. ldae_vit_micro_patch4_32.cifar10")
    args = parser.parse_args(argv)

    tags = released_tags()
    name = args.model or (tags[0] if tags else "ldae_vit_base")
    pretrained = "." in name or name.startswith(("hf-hub:", "local-dir:"))
    if not pretrained:
        print(f"{name}: no trained weights given or released, using a RANDOM initialisation")
    model = timm.create_model(name, pretrained=pretrained).eval()  # num_classes=0: pooled features

    # Preprocessing comes from the model's pretrained cfg: l-DAE's [-1, 1] normalisation, full-image crop.
    config = resolve_model_data_config(model)
    transform = create_transform(**config, is_training=False)
    if args.images:
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in find_images(args.images)]
    else:
        images = [im for _, im in sample_images()]
    x = torch.stack([transform(im) for im in images])  # (B, 3, H, W)

    with torch.inference_mode():
        pooled = model(x)  # (B, D): global average of the tokens (the linear-probe input)
        tokens = model.forward_features(x)  # (B, N, D): one token per patch, no class token
        last3 = model.forward_intermediates(x, indices=3, intermediates_only=True)  # 3 x (B, D, H/p, W/p)
        blocks = model.get_intermediate_layers(x, n=(3, 7), reshape=False)  # outputs of blocks 3 and 7, (B, N, D)
    # A features_only model returns feature maps like a CNN backbone (for detection/segmentation necks).
    fmap_model = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(-1,)).eval()
    with torch.inference_mode():
        fmaps = fmap_model(x)  # [(B, D, H/p, W/p)]

    print(f"model {name}: {len(images)} images of {tuple(x.shape[-2:])} px")
    print(f"  pooled features   {tuple(pooled.shape)}")
    print(f"  patch tokens      {tuple(tokens.shape)}")
    print(f"  last 3 blocks     {[tuple(t.shape) for t in last3]} (NCHW)")
    print(f"  blocks 3 and 7    {[tuple(t.shape) for t in blocks]} (NLC)")
    print(f"  features_only     {[tuple(t.shape) for t in fmaps]}")
    return {"pooled": pooled, "tokens": tokens, "last3": torch.stack(list(last3)), "fmap": fmaps[0],
            "block3": blocks[0], "block7": blocks[1]}


if __name__ == "__main__":
    main()

"""l-DAE backbones through ``torch.hub``, with no install step.

    python examples/torch_hub.py                        # this checkout, offline (source="local")

From GitHub the same call is ``torch.hub.load("<owner>/<repo>", "ldae_vit_base", pretrained=False)``;
every ``ldae_vit_*`` architecture is an entrypoint and every timm keyword passes through
(``pretrained``, ``num_classes``, ``features_only``, ``img_size``, ...).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent  # the folder holding hubconf.py


def main(argv: list[str] | None = None) -> torch.Tensor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ldae_vit_base", help="entrypoint (an ldae_vit_* architecture)")
    parser.add_argument("--pretrained", action="store_true", help="load the released weights of its default tag")
    parser.add_argument("--repo", default=str(REPO), help="a local checkout, or owner/repo[:ref] with --source github")
    parser.add_argument("--source", default="local", choices=("local", "github"))
    args = parser.parse_args(argv)

    model = torch.hub.load(args.repo, args.model, source=args.source, pretrained=args.pretrained, trust_repo=True).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: a timm {type(model).__name__} with {n / 1e6:.1f}M parameters "
          f"({'released weights' if args.pretrained else 'random initialisation'})")
    size = model.pretrained_cfg["input_size"]  # (3, H, W) the model was pretrained at
    with torch.inference_mode():
        feats = model(torch.zeros(2, *size))  # (2, D) pooled features
    print(f"features of 2 blank {size[1]}x{size[2]} images: {tuple(feats.shape)}")
    return feats


if __name__ == "__main__":
    main()

"""Linear probe of a frozen l-DAE backbone on your own folder of labelled images.

    python examples/linear_probe_folder.py my_photos/ --model ldae_vit_micro_patch4_32.cifar10

``my_photos/`` holds one sub-folder per class (``my_photos/<class>/<image>``), optionally split
(``my_photos/{train,val}/<class>/<image>``); a ``.tar`` or ``.tar.gz`` of either works too. Without a
``val`` split a seeded ``--val-fraction`` of the images is held out. The features are computed once
(the paper's probe input: average-pooled encoder tokens at the backbone's fixed t, center crop).

The classifier is a full-batch L2-regularised logistic regression on standardised features, solved
with L-BFGS (CLIP's linear-probe protocol): on a few hundred images it converges in seconds with no
learning rate to tune. MAE's protocol (BatchNorm + linear head, LARS, 90 epochs at batch 16384) is
``ldae probe``; its per-step relative update lr x trust_coeff assumes thousands of steps, which a small
folder never gives.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.data import Subset

from ldae.data.folders import build_dataset
from ldae.data.transforms import build_transform
from ldae.eval.backbones import create_backbone, resolve_data_config
from ldae.eval.features import FeatureExtractor, extract_features
from ldae.eval.configs import EvalDataConfig
from ldae.eval.run import build_splits
from ldae.release.denoiser import released_tags


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder / .tar / .tar.gz with <class>/<image> (or <split>/<class>/<image>)")
    parser.add_argument("--model", default=None, help="backbone: released tag, timm name, export folder or checkpoint .pth "
                        "(default: the first released tag)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random-init control")
    parser.add_argument("--train-split", default=None, help="split folder to train on (default: 'train' when present)")
    parser.add_argument("--val-split", default=None, help="split folder to evaluate on (default: 'val' or 'test' when present)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share when there is no val split")
    parser.add_argument("--wd", type=float, default=1e-3, help="L2 penalty of the logistic regression")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tags = released_tags()
    if args.model is None and not tags:
        parser.error("no trained l-DAE weights are released yet: pass --model (a checkpoint .pth, an export folder, "
                     "or any timm name with --no-pretrained for the random-init control)")
    backbone = create_backbone(args.model or tags[0], pretrained=args.pretrained)
    cfg = resolve_data_config(backbone.model, backbone.data_config or None)
    transform = build_transform(cfg["input_size"][-1], train=False, mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"])

    try:  # class folders directly (or a single split): hold out a seeded fraction
        if args.train_split or args.val_split:
            raise ValueError("splits named")
        full = build_dataset(args.data, None, transform)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
        n_val = max(1, round(args.val_fraction * len(full)))
        train, val = Subset(full, order[n_val:]), Subset(full, order[:n_val])
    except ValueError:  # several splits: train and val (or test), with matching class folders
        splits = EvalDataConfig(data=args.data, train_split=args.train_split or "train", val_split=args.val_split)
        train, val = build_splits(splits, transform, transform)

    extractor = FeatureExtractor.from_backbone(backbone)
    f_train, y_train = extract_features(extractor, train, batch_size=64, num_workers=0, desc="train features")
    f_val, y_val = extract_features(extractor, val, batch_size=64, num_workers=0, desc="val features")
    classes = getattr(getattr(train, "dataset", train), "classes")
    head = fit_logistic_regression(f_train, y_train, len(classes), args.wd)
    top1 = 100.0 * float((head(f_val).argmax(1) == y_val).float().mean())
    print(f"{backbone.spec}: linear probe on {len(f_train)} images, {len(classes)} classes, "
          f"{f_train.shape[1]}-d features -> top-1 {top1:.1f}% on {len(f_val)} held-out images")
    return top1


def fit_logistic_regression(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, wd: float) -> torch.nn.Module:
    """Standardise (N, D) features with the training statistics, then fit a linear layer by L-BFGS."""
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    linear = torch.nn.Linear(feats.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)  # a convex problem: any start reaches the same optimum
    torch.nn.init.zeros_(linear.bias)
    x = (feats - mean) / std
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), labels) + wd * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.nn.Sequential(_Standardize(mean, std), linear).eval().requires_grad_(False)


class _Standardize(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (B, D)


if __name__ == "__main__":
    main()

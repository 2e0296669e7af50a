"""The allowed range of every numeric command-line flag, defined once and checked before any work.

``ldae <command>`` (and ``python -m ldae.<command>``) checks the parsed flags against :data:`DOMAINS`
before the command runs, so ``--clip-grad -1`` or ``--min-lr -1`` stop at once with one line naming
the flag and its range instead of training on with a negative gradient scale or learning rate.
Flags are keyed by their argparse ``dest``; a name means the same quantity in every command that has
it (``--batch-size`` is a count of images everywhere, ``--lr`` a learning rate). A test walks every
parser and fails when a numeric flag has no entry here.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["Domain", "DOMAINS", "ORDERED_PAIRS", "check_flags", "numeric_actions"]


@dataclass(frozen=True)
class Domain:
    """An interval of allowed values: ``lo``/``hi`` None for unbounded, ``*_open`` to exclude the bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def describe(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}"

        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return "a finite number"


POSITIVE = Domain(0, lo_open=True)  # rates, scales, temperatures
NON_NEGATIVE = Domain(0)  # weights that may be off, worker counts, levels
COUNT = Domain(1)  # sizes, steps, epochs, images, batches
FRACTION = Domain(0, 1)  # probabilities
DECAY = Domain(0, 1, hi_open=True)  # momentum-like factors: 1 would never move
ANY = Domain()

DOMAINS: dict[str, Domain] = {
    # data and images
    "img_size": COUNT, "input_size": COUNT, "patch_size": COUNT, "token_patch": COUNT, "limit": COUNT,
    "patches_per_image": COUNT, "fit_patches_per_image": COUNT, "max_images": COUNT, "max_patches": COUNT,
    "fit_images": COUNT, "epoch_samples": COUNT, "shuffle_buffer": COUNT, "num_classes": COUNT,
    "crop_scale": Domain(0, 1, lo_open=True), "crop_pct": Domain(0, 1, lo_open=True),
    "mean": ANY, "std": POSITIVE, "workers": NON_NEGATIVE, "num_workers": NON_NEGATIVE,
    # model and noise
    "d": COUNT, "enc_depth": COUNT, "num_levels": COUNT, "tail_weight": NON_NEGATIVE, "cond_ratio": POSITIVE,
    "t": NON_NEGATIVE, "sigma": NON_NEGATIVE, "kl_weight": NON_NEGATIVE,
    # optimisation
    "epochs": COUNT, "steps": COUNT, "warmup_epochs": NON_NEGATIVE, "global_batch": COUNT, "batch_size": COUNT,
    "micro_batch_size": COUNT, "patch_batch": COUNT, "accum_iter": COUNT, "blr": POSITIVE, "lr": POSITIVE,
    "min_lr": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "betas": DECAY, "momentum": DECAY, "trust_coeff": POSITIVE,
    "clip_grad": POSITIVE, "ema_decay": DECAY, "model_ema_decay": DECAY, "layer_decay": Domain(0, 1, lo_open=True),
    "drop_path": DECAY, "smoothing": DECAY, "reprob": FRACTION, "recount": COUNT, "mixup": NON_NEGATIVE,
    "cutmix": NON_NEGATIVE, "cutmix_minmax": FRACTION, "mixup_prob": FRACTION, "mixup_switch_prob": FRACTION,
    "k": COUNT, "temperature": POSITIVE,
    # run bookkeeping and speed
    "seed": NON_NEGATIVE, "threads": COUNT, "peak_tflops": POSITIVE, "log_every": COUNT, "eval_every": COUNT,
    "save_every_epochs": COUNT, "last_every_epochs": COUNT, "save_every_steps": NON_NEGATIVE, "stop_at_step": COUNT,
    "minutes": NON_NEGATIVE,
    # figures
    "cols": COUNT, "size": COUNT,
}

# Two-value flags whose first value must not exceed the second (a reversed range fails deep in a loop).
ORDERED_PAIRS = ("crop_scale", "cutmix_minmax")


def numeric_actions(parser: argparse.ArgumentParser) -> Iterable[tuple[str, argparse.Action]]:
    """(subcommand path, action) for every int/float flag of ``parser`` and its subparsers."""
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {path}".strip(), a) for path, a in numeric_actions(sub))
        elif action.type in (int, float):
            yield "", action


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the first numeric flag of ``args`` outside its domain (None = not given)."""
    seen: set[str] = set()
    for _, action in numeric_actions(parser):
        if action.dest in seen or not hasattr(args, action.dest):
            continue
        seen.add(action.dest)
        value: Any = getattr(args, action.dest)
        if value is None:
            continue
        domain = DOMAINS.get(action.dest)
        if domain is None:
            raise KeyError(f"flag {_flag(action)} has no domain in ldae.cli.flag_domains.DOMAINS")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if v not in domain]
        if bad:
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
            raise ValueError(f"{_flag(action)} must be {domain.describe()}, got {shown}")
        if action.dest in ORDERED_PAIRS and len(values) == 2 and values[0] > values[1]:
            raise ValueError(f"{_flag(action)} takes MIN MAX with MIN <= MAX, got {values[0]:g} {values[1]:g}")
    warmup, epochs = getattr(args, "warmup_epochs", None), getattr(args, "epochs", None)
    if warmup is not None and epochs is not None and warmup > epochs:  # would fail after the work started
        raise ValueError(f"--warmup-epochs {warmup:g} must not exceed --epochs {epochs}")

"""``torch.hub`` entrypoints: one keyword-only function per registered ``ldae_vit_*`` architecture.

``hubconf.py`` at the repository root only imports these. Each entrypoint is
``timm.create_model(<arch>, pretrained=pretrained, **kwargs)``, so every timm option passes through::

    torch.hub.load("<owner>/<repo>", "ldae_vit_base", features_only=True, out_indices=(3, 7, 11))
"""
from __future__ import annotations

from typing import Any, Callable

import timm
import torch.nn as nn

from ldae.models import registry

__all__: list[str] = []


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    def entrypoint(*, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    # The registered entrypoint's one-line docstring, e.g. "l-DAE ViT-B/16 encoder, 256 px: 12 blocks x 768 (paper Tab. 4)."
    entrypoint.__doc__ = getattr(registry, arch).__doc__
    return entrypoint


for _arch in (*registry.ARCH_NAMES, registry.CUSTOM_ARCH):  # every registered ldae_vit_* model
    globals()[_arch] = _entrypoint(_arch)
    __all__.append(_arch)
del _arch

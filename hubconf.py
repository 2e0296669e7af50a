"""torch.hub entrypoints of l-DAE: ``torch.hub.load("<owner>/<repo>", "ldae_vit_base", pretrained=False)``.

Every ``ldae_vit_*`` architecture is an entrypoint taking ``pretrained`` and any timm keyword
(``num_classes``, ``features_only``, ``img_size``, ``pretrained_cfg_overlay=dict(file=...)``, ...).
"""
dependencies = ["torch", "timm", "safetensors", "huggingface_hub"]

from ldae.models.hub import *  # noqa: E402,F401,F403

"""l-DAE: latent Denoising Autoencoders (Chen, Liu, Xie, He; arXiv:2401.14404).

Importing this package registers the ``ldae_vit_*`` architectures with timm::

    import ldae, timm
    backbone = timm.create_model("ldae_vit_base")          # a plain timm VisionTransformer
    tokenizer = ldae.get_tokenizer("ldae_vit_base")        # the shipped 16x16x3 patch PCA
    add_noise = ldae.get_noise_transform("ldae_vit_base", t=500)
"""
__version__ = "0.1.0"

from ldae.models import registry as zoo  # noqa: E402,F401  (registers the models with timm)
from ldae.models.sizes import SIZES, ModelSize, get_size, vit_kwargs  # noqa: E402
from ldae.models.export import export_to_timm  # noqa: E402
from ldae.models.ldae import LDAE, LDAEOutput, build_ldae  # noqa: E402
from ldae.diffusion.noise import AddLatentNoise, LatentNoise  # noqa: E402
from ldae.diffusion.schedules import build_schedule  # noqa: E402
from ldae.tokenizers.pca import DIT_NORM, IMAGENET_NORM, PatchPCA  # noqa: E402
from ldae.release.manifest import get_noise_config, get_noise_transform, get_tokenizer, load_manifest  # noqa: E402

__all__ = [
    "__version__", "zoo", "SIZES", "ModelSize", "get_size", "LDAE", "LDAEOutput", "build_ldae", "PatchPCA",
    "DIT_NORM", "IMAGENET_NORM", "LatentNoise", "AddLatentNoise", "build_schedule", "export_to_timm",
    "vit_kwargs", "get_tokenizer", "get_noise_transform", "get_noise_config", "load_manifest",
]

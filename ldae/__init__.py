"""l-DAE: latent Denoising Autoencoders (Chen, Liu, Xie, He; arXiv:2401.14404).

Importing this package registers the ``ldae_vit_*`` architectures with timm.
"""
__version__ = "0.1.0"

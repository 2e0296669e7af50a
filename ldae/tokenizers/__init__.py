"""Tokenizers of the noise latent: the patch PCA (l-DAE's), linear patch AE / VAE, the pixel identity, and their fitting."""

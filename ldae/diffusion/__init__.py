"""What makes a step a denoising step: noise schedules, latent-noise injection, targets and the Eq. 4 loss."""

"""Images in: image decoding, folder / tar / archive / shard datasets, transforms, the GPU-resident path, the sampler."""

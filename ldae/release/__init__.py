"""What is published: the weights manifest, export folders with model cards and checksums, denoiser files, ONNX, tables."""

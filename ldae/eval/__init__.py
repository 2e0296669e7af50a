"""Evaluation of frozen or fine-tuned backbones: backbones from any source, features and their cache, probe, k-NN, fine-tune."""

"""Figures of the paper for a model, a tokenizer, images or a training log, and the offline demo."""

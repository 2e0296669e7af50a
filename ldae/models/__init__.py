"""The l-DAE model: blocks, sizes, the pretraining model, the exact fold to a timm ViT and back, timm registration."""

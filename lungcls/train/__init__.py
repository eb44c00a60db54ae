"""Stage 3, train: a dataset version -> a candidate model version.

models (the ResNet family, 2D and 3D), augment, trainer (Ray Train workers fed by Ray Data,
checkpoints, resume, publishing the best epoch), tune (Ray Tune search)."""

"""Stage 3, train: a dataset version -> a candidate model version.

models (the ResNet family, 2D and 3D), augment, loop (the epoch loop, without Ray), runs
(run records, history and resume), worker (the Ray Train worker: the loop wired to Ray's
shards, DDP and checkpoints), trainer (the driver: Ray Data, the TorchTrainer, publishing
the best epoch), tune (Ray Tune search)."""

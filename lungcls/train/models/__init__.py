"""CNN classifiers for preprocessed CT tensors: one ResNet-style family in 2D and 3D.

`build_model(settings, tensor_shape, seed)` is the one way to make a model: the same seed
gives the same initial weights, on any machine.
"""

from lungcls.train.models.resnet import ResNetClassifier, build_model

__all__ = ["ResNetClassifier", "build_model"]

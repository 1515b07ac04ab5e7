"""The model zoo: a registry of small classifiers that take inputs in ``[0, 1]``.

>>> from robustlab import models
>>> models.available()
['mlp', 'mnist_net', 'preact_resnet18', 'resnet18', 'small_cnn', 'timm', 'torchvision', 'wide_resnet', 'wrn-28-10', 'wrn-34-10']
>>> net = models.create("preact_resnet18", num_classes=10, in_channels=3, input_size=32,
...                     mean=[0.4914, 0.4822, 0.4465], std=[0.2471, 0.2435, 0.2616])
>>> type(next(net.children())).__name__          # normalisation lives in the model
'Normalize'
>>> path = models.save_model(net, "net.safetensors")     # doctest: +SKIP
>>> net2 = models.load_model(path)                        # doctest: +SKIP

Models (see each class for its paper and the official code it follows):

``mlp``                 fully connected ReLU network (``hidden=(256, 256)``)
``mnist_net``           Wong, Rice & Kolter 2020, small MNIST CNN
``small_cnn``           TRADES (Zhang et al. 2019) SmallCNN
``preact_resnet18``     He et al. 2016 (identity mappings), CIFAR variant of Rice et al. 2020
``resnet18``            He et al. 2016, CIFAR stem
``wide_resnet``         Zagoruyko & Komodakis 2016, TRADES/MART layout; presets
                        ``wrn-28-10`` and ``wrn-34-10``
``timm``, ``torchvision``  optional adapters (``arch=``), imported only when used

Checkpoints are safetensors files with a sha256 of the weights and the model's
``robustlab_config``, written byte-reproducibly (:func:`save_model`, extra string
``metadata=`` read back by :func:`read_metadata`); :func:`load_model` never unpickles
arbitrary objects. :func:`weights_sha256` is the identity of a model's weights.
"""

from __future__ import annotations

from robustlab.models import (  # noqa: F401  (import registers the models)
    adapters,
    mlp,
    mnist_net,
    preact_resnet,
    resnet,
    small_cnn,
    wide_resnet,
)
from robustlab.models.ensemble import Ensemble  # noqa: F401  (registers 'ensemble')
from robustlab.models.io import (
    convert_checkpoint,
    file_sha256,
    load_model,
    read_metadata,
    save_model,
    tensors_sha256,
    weights_sha256,
)
from robustlab.models.layers import Normalize, ZooModel, count_parameters
from robustlab.models.mixed import MixedClassifier, mix  # noqa: F401  (registers 'mixed')
from robustlab.models.registry import (
    available,
    channel_stats,
    create,
    for_dataset,
    list_models,
    models,
)

__all__ = [
    "Normalize",
    "ZooModel",
    "available",
    "channel_stats",
    "convert_checkpoint",
    "count_parameters",
    "create",
    "file_sha256",
    "for_dataset",
    "list_models",
    "load_model",
    "models",
    "read_metadata",
    "save_model",
    "tensors_sha256",
    "weights_sha256",
]

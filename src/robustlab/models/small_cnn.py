"""SmallCNN of TRADES (Zhang et al. 2019).

H. Zhang, Y. Yu, J. Jiao, E. P. Xing, L. El Ghaoui, M. I. Jordan. "Theoretically
Principled Trade-off between Robustness and Accuracy." ICML 2019. Architecture and
initialisation from the official code, ``models/small_cnn.py`` in
github.com/yaodongyu/TRADES (the MNIST model of the paper, originally from Carlini &
Wagner 2017).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel, flat_features
from robustlab.models.registry import models
from robustlab.validation import check_float


@models.register("small_cnn", aliases=("smallcnn",))
class SmallCNN(ZooModel):
    """``conv32(3x3) -> ReLU -> conv32 -> ReLU -> maxpool2 -> conv64 -> ReLU -> conv64 ->
    ReLU -> maxpool2 -> fc200 -> ReLU -> Dropout -> fc200 -> ReLU -> fc(num_classes)``.

    Unpadded convolutions as in TRADES, so inputs must be at least 14x14 (28x28 MNIST
    gives the official ``64*4*4`` flatten size; other sizes are computed with a dummy
    forward pass). Dropout (TRADES' ``drop=0.5``) sits after the first fully connected
    layer only, as in the official code. Initialisation as in TRADES: Kaiming-normal convs
    with zero bias, and a zero last layer (so a fresh model outputs all-zero logits).
    Module names match the official code (``feature_extractor.conv1``, ...,
    ``classifier.fc3``), so TRADES checkpoints load after conversion.

    Parameters
    ----------
    dropout: dropout probability after ``fc1`` (default 0.5, TRADES' ``drop``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.5,
    ) -> None:
        if input_size is None:
            raise ConfigError(
                "small_cnn is convolutional and needs image inputs: pass in_channels=C and "
                "input_size=(H, W) (use 'mlp' for vector data)."
            )
        dropout = check_float(dropout, "small_cnn dropout", low=0.0, high=1.0, high_open=True)
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        flat = flat_features(self.feature_extractor, in_channels, input_size, "small_cnn")
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(flat, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(float(dropout))),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        fc3 = self.classifier.get_submodule("fc3")
        assert isinstance(fc3, nn.Linear)
        nn.init.zeros_(fc3.weight)
        nn.init.zeros_(fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.feature_extractor(self.normalize(x))))

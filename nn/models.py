"""Model registry and factory (timm style): ``create_model(name, num_classes=, in_chans=, act_layer=, cim_config=)``.

Reference networks of the two seeds, a small Fashion-MNIST twin of each (28x28x1), and tiny ``test_*``
variants the test suite parametrizes over. With ``cim_config`` every Conv2d/Linear becomes its CIM twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn as tnn

from nn.config import CIMConfig, CIMConfigError
from nn.convert import convert

_REGISTRY: dict[str, Callable[..., tnn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., tnn.Module]], Callable[..., tnn.Module]]:
    def deco(fn: Callable[..., tnn.Module]) -> Callable[..., tnn.Module]:
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10, in_chans: int | None = None,
                 act_layer: type[tnn.Module] | None = None, cim_config: CIMConfig | None = None,
                 **kwargs: Any) -> tnn.Module:
    """Build a registered model; convert it to CIM layers when ``cim_config`` is given."""
    if name not in _REGISTRY:
        raise CIMConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if num_classes <= 0:
        raise CIMConfigError(f"num_classes={num_classes} must be > 0")
    args: dict[str, Any] = {"num_classes": num_classes, **kwargs}
    if in_chans is not None:
        args["in_chans"] = in_chans
    if act_layer is not None:
        args["act_layer"] = act_layer
    model = _REGISTRY[name](**args)
    return convert(model, cim_config) if cim_config is not None else model


class VGG(tnn.Module):
    """VGG-8 of DNN+NeuroSim: conv w-w-M-2w-2w-M-4w-4w-M, FC fc, FC classes (w=128, fc=1024 for CIFAR-10)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 128, fc: int = 1024,
                 image: int = 32, act_layer: type[tnn.Module] = tnn.ReLU) -> None:
        super().__init__()
        layers: list[tnn.Module] = []
        c = in_chans
        for w, pool in ((width, False), (width, True), (2 * width, False), (2 * width, True),
                        (4 * width, False), (4 * width, True)):
            layers += [tnn.Conv2d(c, w, 3, padding=1, bias=False), tnn.BatchNorm2d(w), act_layer()]
            if pool:
                layers.append(tnn.MaxPool2d(2))
            c = w
        self.features = tnn.Sequential(*layers)
        side = image // 8
        self.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(c * side * side, fc), act_layer(),
                                         tnn.Linear(fc, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def stages(self) -> list[tnn.Module]:
        """The forward as a chain of modules (a weight attack recomputes only from the stage it changed)."""
        return [*self.features, *self.classifier]


class _DenseLayer(tnn.Module):
    def __init__(self, c: int, growth: int, act_layer: type[tnn.Module]) -> None:
        super().__init__()
        self.body = tnn.Sequential(tnn.BatchNorm2d(c), act_layer(), tnn.Conv2d(c, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(tnn.Module):
    """DenseNet (basic layers, no bottleneck): depth 40, growth 24 in the seed; 3 blocks of (depth-4)/3."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 40, growth: int = 24,
                 act_layer: type[tnn.Module] = tnn.ReLU) -> None:
        super().__init__()
        n = (depth - 4) // 3
        c = 2 * growth
        mods: list[tnn.Module] = [tnn.Conv2d(in_chans, c, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                mods.append(_DenseLayer(c, growth, act_layer))
                c += growth
            if block < 2:
                mods += [tnn.BatchNorm2d(c), act_layer(), tnn.Conv2d(c, c, 1, bias=False), tnn.AvgPool2d(2)]
        mods += [tnn.BatchNorm2d(c), act_layer(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten()]
        self.features = tnn.Sequential(*mods)
        self.fc = tnn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def stages(self) -> list[tnn.Module]:
        """The forward as a chain of modules (see :meth:`VGG.stages`)."""
        return [*self.features, self.fc]


class _Basic(tnn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act_layer: type[tnn.Module]) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.act1, self.act2 = act_layer(), act_layer()
        self.short: tnn.Module = tnn.Identity()
        if stride != 1 or cin != cout:
            self.short = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + self.short(x))


class ResNet(tnn.Module):
    """CIFAR ResNet-18 (4 stages of 2 basic blocks, widths w, 2w, 4w, 8w; w=64 in the seed)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64,
                 act_layer: type[tnn.Module] = tnn.ReLU) -> None:
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(in_chans, width, 3, 1, 1, bias=False), tnn.BatchNorm2d(width),
                                   act_layer())
        blocks: list[tnn.Module] = []
        c = width
        for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [_Basic(c, w, 1 if i == 0 else 2, act_layer), _Basic(w, w, 1, act_layer)]
            c = w
        self.blocks = tnn.Sequential(*blocks)
        self.head = tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def stages(self) -> list[tnn.Module]:
        """The forward as a chain of modules (see :meth:`VGG.stages`)."""
        return [*self.stem, *self.blocks, *self.head]


register("vgg8")(lambda **k: VGG(**k))
register("densenet40")(lambda **k: DenseNet(**{"depth": 40, "growth": 24, **k}))
register("resnet18")(lambda **k: ResNet(**k))
register("resnet18_celu")(lambda **k: ResNet(**{"act_layer": tnn.CELU, **k}))
register("vgg8_fmnist")(lambda **k: VGG(**{"in_chans": 1, "width": 32, "fc": 256, "image": 28, **k}))
register("densenet_fmnist")(lambda **k: DenseNet(**{"in_chans": 1, "depth": 16, "growth": 12, **k}))
# seed 001's DenseNet-40 at the canonical growth 12 (Huang et al.; the seed's CIFAR model uses 24): 216 MFLOP
# per 28x28 image, 7x vgg8_fmnist
register("densenet40_fmnist")(lambda **k: DenseNet(**{"in_chans": 1, "depth": 40, "growth": 12, **k}))
register("resnet18_fmnist")(lambda **k: ResNet(**{"in_chans": 1, "width": 16, **k}))
register("test_vgg")(lambda **k: VGG(**{"in_chans": 1, "width": 4, "fc": 16, "image": 28, **k}))
register("test_densenet")(lambda **k: DenseNet(**{"in_chans": 1, "depth": 7, "growth": 4, **k}))
register("test_resnet")(lambda **k: ResNet(**{"in_chans": 1, "width": 4, **k}))

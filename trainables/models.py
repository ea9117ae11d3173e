"""Model registry. Every model takes images in [0, 1]; normalisation is its first layer."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def digits_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Small CNN for 8x8 digits (~30k weights)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))


def cifar_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """CPU-scale CNN for 32x32 inputs (~0.6M weights)."""
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(
        *block(in_channels, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, num_classes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, CIFAR variant: 3x3 stem, no max-pool)."""

    def __init__(self, blocks_per_stage, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, c_in = [], 64
        for i, (c_out, n) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(in_channels: int, num_classes: int) -> nn.Module:
    """VGG-16 with batch norm, CIFAR variant (one linear classifier on the 512-d feature)."""
    layers, c_in = [], in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "digits-cnn": digits_cnn,
    "cifar-cnn": cifar_cnn,
    "resnet18": lambda c, k: CifarResNet((2, 2, 2, 2), c, k),
    "vgg16": vgg16_bn,
}


def build_model(arch: str, in_channels: int, num_classes: int, mean, std) -> nn.Module:
    """A fresh model whose first layer normalises [0, 1] inputs with the dataset's mean/std."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: unknown '{arch}'; allowed: {', '.join(sorted(ARCHITECTURES))}")
    return nn.Sequential(Normalize(mean, std), ARCHITECTURES[arch](in_channels, num_classes))


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; the device is chosen at run time, never baked in."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)

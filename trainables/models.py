"""Model registry. Every model takes images in [0, 1]; normalisation is its first layer.

The CIFAR networks are named in the key layout the AP codebases and RobustBench publish (the
de-facto CIFAR layout of kuangliu/pytorch-cifar, HYDRA, R-ADMM, ATMC: `conv1`, `bn1`,
`layer1.0.conv1`, `shortcut.0`, `linear`; VGG `features.N` / `classifier`; WideResNet
`block1.layer.0.convShortcut`, `bn1`, `fc`), so a published state dict of the bare network loads
with strict=True into `model[1]` (trainables/checkpoints.py adapts the rest).
"""

from __future__ import annotations

from collections.abc import Callable

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
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def cifar_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """CPU-scale CNN for 32x32 inputs (~0.6M weights)."""

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


def cifar_tiny(in_channels: int, num_classes: int) -> nn.Module:
    """cifar-small with stride-2 convolutions in place of max-pooling (the all-convolutional net of
    Springenberg et al., 2015): the same ~0.16M weights at ~3.5x less time per query on a CPU core,
    so the CPU-scale CIFAR-10 grid fits in two hours with AutoAttack on 1,000 samples."""

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 16),
        *block(16, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def cifar_small(in_channels: int, num_classes: int) -> nn.Module:
    """The smallest 32x32 CNN (~0.1M weights, ~3M multiply-adds): CPU-scale CIFAR-10 grids with
    AutoAttack on 1,000 samples (cifar-cnn costs ten times more per query)."""

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(in_channels, 16),
        *block(16, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(c_in, planes * 4, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(c_in, c_out, stride) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, CIFAR variant: 3x3 stem, no max-pool); keys as
    kuangliu/pytorch-cifar and HYDRA's models/resnet_cifar.py name them."""

    def __init__(self, block, blocks_per_stage, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stage = []
            for j in range(n):
                stage.append(block(c_in, planes, 2 if (i > 0 and j == 0) else 1))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016); a 1x1 `convShortcut` where
    the width or stride changes (RobustBench's and HYDRA's models/wrn_cifar.py names)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.equal = stride == 1 and c_in == c_out
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = x if self.equal else self.convShortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + short


class NetworkBlock(nn.Module):
    def __init__(self, n, c_in, c_out, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n))
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen, in_channels=3, num_classes=10):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn1(out))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        return torch.cat([self.conv2(torch.relu(self.bn2(out))), x], 1)


class Transition(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        return nn.functional.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs (Huang et al. 2017; growth 32, compression 0.5); keys as
    kuangliu/pytorch-cifar names them (dense1, trans1, ..., bn, linear)."""

    def __init__(self, blocks=(6, 12, 24, 16), growth=32, in_channels=3, num_classes=10):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        for i, n in enumerate(blocks):
            setattr(
                self, f"dense{i + 1}", nn.Sequential(*(DenseLayer(c + k * growth, growth) for k in range(n)))
            )
            c += n * growth
            if i < len(blocks) - 1:
                setattr(self, f"trans{i + 1}", Transition(c, c // 2))
                c //= 2
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = torch.relu(self.bn(self.dense4(out)))
        return self.linear(torch.flatten(nn.functional.avg_pool2d(out, 4), 1))


MOBILENET_CFG = (64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024)


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with batch norm and ReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), CIFAR variant: stride-1 stem, depthwise-separable blocks;
    keys as kuangliu/pytorch-cifar names them (conv1, bn1, layers.N.conv1, linear)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, c_in = [], 32
        for item in MOBILENET_CFG:
            c_out, stride = item if isinstance(item, tuple) else (item, 1)
            blocks.append(SeparableBlock(c_in, c_out, stride))
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


VGG_CFGS = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


def vgg_features(cfg, in_channels: int, conv_bias: bool = True) -> nn.Sequential:
    layers, c_in = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG with batch norm, CIFAR variant (kuangliu/pytorch-cifar, R-ADMM, ATMC): five max-pools,
    one linear classifier on the 512-d feature; keys features.N and classifier."""

    def __init__(self, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        self.features = vgg_features(VGG_CFGS[depth], in_channels)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class HydraVGG(nn.Module):
    """The VGG-16 of HYDRA (inspire-group/hydra models/vgg_cifar.py vgg16_bn) and of the survey's
    benchmark: bias-free convolutions, four max-pools (none after the last block), a 2x2 average
    pool and a three-layer head 2048-256-256-classes."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = vgg_features(VGG_CFGS[16][:-1], in_channels, conv_bias=False)
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "digits-cnn": digits_cnn,
    "cifar-cnn": cifar_cnn,
    "cifar-small": cifar_small,
    "cifar-tiny": cifar_tiny,
    "resnet18": lambda c, k: CifarResNet(BasicBlock, (2, 2, 2, 2), c, k),
    "resnet34": lambda c, k: CifarResNet(BasicBlock, (3, 4, 6, 3), c, k),
    "resnet50": lambda c, k: CifarResNet(Bottleneck, (3, 4, 6, 3), c, k),
    "vgg16": lambda c, k: VGG(16, c, k),
    "vgg16-hydra": HydraVGG,
    "vgg19": lambda c, k: VGG(19, c, k),
    "wrn-28-4": lambda c, k: WideResNet(28, 4, c, k),
    "wrn-28-10": lambda c, k: WideResNet(28, 10, c, k),
    "densenet121": lambda c, k: DenseNet((6, 12, 24, 16), 32, c, k),
    "mobilenetv1": MobileNetV1,
}


def build_model(arch: str, in_channels: int, num_classes: int, mean, std) -> nn.Module:
    """A fresh model whose first layer normalises [0, 1] inputs with the dataset's mean/std."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: unknown '{arch}'; allowed: {', '.join(sorted(ARCHITECTURES))}")
    return nn.Sequential(Normalize(mean, std), ARCHITECTURES[arch](in_channels, num_classes))


def fit_to_state(model: nn.Module, state: dict) -> nn.Module:
    """Resize conv, linear and batch-norm layers to the shapes in `state` (a model whose filters
    were physically removed by structured pruning), so that load_state_dict accepts it."""
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state or tuple(state[key].shape) == tuple(getattr(m, "weight", torch.empty(0)).shape):
            continue
        shape = state[key].shape
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = shape[0]
            m.groups = shape[0] if depthwise else m.groups
            m.in_channels = shape[0] if depthwise else shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = shape
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(m, buf, torch.empty(shape))
        else:
            continue
        m.weight = nn.Parameter(torch.empty(shape))
        if getattr(m, "bias", None) is not None:
            m.bias = nn.Parameter(torch.empty(state[f"{name}.bias"].shape))
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; the device is chosen at run time, never baked in."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)

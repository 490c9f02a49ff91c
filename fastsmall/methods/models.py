"""Networks of the method pipelines, written here (torchvision is not available with
the CPU torch of the development machine).

* ``DigitsCNN``: a small CNN for 8x8 digits (first conv ``stem``, classifier ``fc``);
  ``width`` sets the base width (``widths = (w, w, 2w, 2w)``), or ``widths`` the four conv
  widths explicitly (Knowledge Evolution's slim network is ``widths = ceil(s_r * w)``);
* ``WideResNet``: WRN-28-2 as in FixMatch (leaky ReLU 0.1, BN momentum 0.001), for 32x32;
* ``resnet18``: torchvision's layout and parameter names exactly (``conv1`` 7x7 stem,
  ``bn1``, ``layer1..4`` of two BasicBlocks each with ``conv1``/``bn1``/``conv2``/``bn2``
  and a ``downsample`` = (1x1 conv, BatchNorm) where the shape changes, ``fc``), so
  masks and state dicts line up with code written for torchvision's model; layers keep
  PyTorch's default initialisation. ``widths`` (default ``(64, 128, 256, 512)``, the stem
  has ``widths[0]`` channels) gives narrower variants with the same parameter names.
* ``vgg11_bn``: torchvision's VGG11-BN (the KE paper's CUB-200 network) -- layout and
  parameter names exactly (``features`` = 8 x (3x3 conv with bias, BatchNorm, ReLU) and 5
  max-pools where torchvision's ``cfgs["A"]`` has them, ``avgpool`` = AdaptiveAvgPool2d((7, 7)),
  ``classifier`` = Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout,
  Linear(4096, classes)): 132,868,840 parameters at 1000 classes, as torchvision's. The
  adaptive pool takes any input of at least 32x32 (five 2x2 pools). ``widths`` (the 8 conv
  widths, default ``(64, 128, 256, 256, 512, 512, 512, 512)``) and ``hidden`` (4096) give
  narrower variants with the same parameter names (KE's slim network). Layers keep
  PyTorch's default initialisation (the pipelines re-initialise the weights).

``set_channels_last_maps(model, True)`` (``--channels-last``) makes DigitsCNN's feature maps NHWC
from the first layer on, whatever the input's layout. ``set_fused_bn_act(model, True)`` makes
DigitsCNN and WRN run each BatchNorm -> (leaky) ReLU pair as one ``fastsmall.ops.bn_act_dropout_layer``
call on channels-last maps of at least ``FUSED_BN_ACT_MIN_ELEMENTS`` (same modules, parameters and
state dict; in any other layout, on small maps, and by default, the modules run). The trainers switch it on for
``--impl fused --channels-last``: in the CReST+ bf16 step, batch norm and ReLU forward and backward
were ~20 % of the time as four aten ops per layer (bench/RESULTS.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops

__all__ = ["set_fused_bn_act", "set_channels_last_maps", "DigitsCNN", "WideResNet", "BasicBlock", "ResNet",
           "resnet18", "VGG", "VGG11_CFG", "vgg11_bn", "build", "MODELS"]

#: the networks ``build`` knows
MODELS = ("digits_cnn", "wrn28_2", "resnet18", "vgg11_bn")


def _set_switch(model: nn.Module, name: str, on: bool) -> nn.Module:
    for m in model.modules():
        if hasattr(m, name):
            setattr(m, name, bool(on))
    return model


def set_fused_bn_act(model: nn.Module, on: bool) -> nn.Module:
    """Fused BatchNorm -> ReLU (``fastsmall.ops.bn_act_dropout_layer``) on or off in every module of
    ``model`` that has the switch (``fused_bn_act``); returns ``model``. Off for a model run under
    ``torch.func.vmap`` (stacked seeds): fastsmall's ops have no batching rule."""
    return _set_switch(model, "fused_bn_act", on)


def set_channels_last_maps(model: nn.Module, on: bool) -> nn.Module:
    """NHWC feature maps from the first layer on, in every module of ``model`` that has the switch
    (``channels_last_maps``; ``--channels-last``); returns ``model``. Needed where the input gives
    no cue: a 1-channel image is both layouts at once, so with contiguous weights (KE and DSD keep
    theirs contiguous) every convolution would run NCHW."""
    return _set_switch(model, "channels_last_maps", on)


# Maps smaller than this run the modules even when the fused layers are on: measured in the steps
# (bench/bench_steps.py, AVX512-BF16 EPYC, 2 threads), KE's and DSD's batches of 32 (65 k elements
# a map) ran 1.2x slower fused -- the op's Python wrapper and autograd node (~0.1 ms) outweigh what
# one pass saves at that size -- while CReST's 480-image maps gain (bench/RESULTS.md).
FUSED_BN_ACT_MIN_ELEMENTS = 2 ** 18


def _fuses(fused: bool, x) -> bool:
    return fused and x.numel() >= FUSED_BN_ACT_MIN_ELEMENTS


def _bn_act(fused: bool, bn: nn.Module, x, negative_slope: float = 0.0):
    """``F.relu(bn(x))`` (``F.leaky_relu`` with ``negative_slope``); switched on and large enough
    (``FUSED_BN_ACT_MIN_ELEMENTS``), ``bn_act_dropout_layer``, which fuses a channels-last map and runs
    the modules' own ops on any other."""
    if _fuses(fused, x):
        return ops.bn_act_dropout_layer(x, bn, negative_slope=negative_slope)
    return F.leaky_relu(bn(x), negative_slope) if negative_slope else F.relu(bn(x))


def _global_mean(fused: bool, x):
    """``x.mean(dim=(2, 3))``; switched on, a channels-last map is averaged as its [N, H*W, C] view
    (a reduction over a middle dimension of contiguous memory). Measured on [480, 64, 4, 4] bf16,
    2 threads: forward + backward 0.25 ms instead of 1.0 ms, same values (each output is the mean of
    the same H*W numbers, accumulated in float32 either way)."""
    if _fuses(fused, x) and x.is_contiguous(memory_format=torch.channels_last):
        N, C, H, W = x.shape
        return x.permute(0, 2, 3, 1).reshape(N, H * W, C).mean(1)
    return x.mean(dim=(2, 3))


class DigitsCNN(nn.Module):
    fused_bn_act = False  # set_fused_bn_act
    channels_last_maps = False  # set_channels_last_maps

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 widths: tuple[int, int, int, int] | None = None):
        super().__init__()
        widths = (width, width, 2 * width, 2 * width) if widths is None else tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {widths}")
        self.num_classes, self.in_channels, self.widths = num_classes, in_channels, widths
        w1, w2, w3, w4 = widths
        self.stem = nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self.conv4 = nn.Conv2d(w3, w4, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(w4)
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x):
        fused = self.fused_bn_act
        x = self.stem(x)
        if self.channels_last_maps or _fuses(fused, x):
            # NHWC from here on, every layer's map (set_channels_last_maps: a 1-channel input does not
            # make the stem's output NHWC by itself)
            x = x.contiguous(memory_format=torch.channels_last)
        x = _bn_act(fused, self.bn1, x)
        x = F.max_pool2d(_bn_act(fused, self.bn2, self.conv2(x)), 2)
        x = _bn_act(fused, self.bn3, self.conv3(x))
        x = _bn_act(fused, self.bn4, self.conv4(x))
        return self.fc(_global_mean(fused, x))


class _WideBlock(nn.Module):
    fused_bn_act = False  # set_fused_bn_act

    def __init__(self, cin, cout, stride, activate_before_residual=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        o = _bn_act(self.fused_bn_act, self.bn1, x, 0.1)
        if self.activate_before_residual or self.shortcut is not None:
            x = o if self.activate_before_residual else x
        y = self.conv1(o)
        y = self.conv2(_bn_act(self.fused_bn_act, self.bn2, y, 0.1))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    fused_bn_act = False  # set_fused_bn_act (every block has the switch too)

    def __init__(self, num_classes: int = 10, depth: int = 28, widen: int = 2, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for group in range(3):
            for i in range(n):
                cin = widths[group] if i == 0 else widths[group + 1]
                stride = (1 if group == 0 else 2) if i == 0 else 1
                blocks.append(_WideBlock(cin, widths[group + 1], stride, activate_before_residual=(group == 0 and i == 0)))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3], momentum=0.001)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = _bn_act(self.fused_bn_act, self.bn, x, 0.1)
        return self.fc(_global_mean(self.fused_bn_act, x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {widths}")
        self.layers, self.num_classes, self.in_channels, self.widths = tuple(layers), num_classes, in_channels, widths
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3,
             widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> ResNet:
    """ResNet-18 (11.7 M parameters at 1000 classes), torchvision's BasicBlock layout."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, widths=widths)


#: torchvision's VGG11 layout (its ``cfgs["A"]``): conv widths, "M" = 2x2 max-pool
VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """torchvision's VGG with BatchNorm (``make_layers(cfg, batch_norm=True)``): ``features``,
    ``avgpool`` (AdaptiveAvgPool2d((7, 7))), ``classifier``; the same parameter names.

    ``cfg`` is the layout (conv widths and "M"); ``widths``, if given, replaces its conv widths in
    order (same pools), ``hidden`` is the classifier's hidden width (4096). The first linear
    layer's input is the 7x7 pooled feature map flattened channel-major: 49 columns per channel
    of the last conv, which ``kels_inner`` declares (KE's KELS split keeps whole channels of it).
    """

    pool_size = (7, 7)

    def __init__(self, cfg=VGG11_CFG, num_classes: int = 1000, in_channels: int = 3,
                 widths: tuple[int, ...] | None = None, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        cfg = tuple(cfg)
        n_convs = sum(1 for v in cfg if v != "M")
        widths = tuple(int(v) for v in cfg if v != "M") if widths is None else tuple(int(w) for w in widths)
        if len(widths) != n_convs or min(widths) < 1:
            raise ValueError(f"widths must be {n_convs} positive ints (one per conv of the layout), got {widths}")
        if int(hidden) < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden}")
        self.cfg, self.num_classes, self.in_channels = cfg, num_classes, in_channels
        self.widths, self.hidden, self.dropout = widths, int(hidden), float(dropout)
        layers, cin, it = [], in_channels, iter(widths)
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                w = next(it)
                layers += [nn.Conv2d(cin, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
        self.features = nn.Sequential(*layers)
        self.n_pools = cfg.count("M")
        self.avgpool = nn.AdaptiveAvgPool2d(self.pool_size)
        cells = math.prod(self.pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(cin * cells, self.hidden), nn.ReLU(True), nn.Dropout(p=self.dropout),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(True), nn.Dropout(p=self.dropout),
            nn.Linear(self.hidden, num_classes))
        #: input columns per input channel of a layer whose input is a flattened feature map
        self.kels_inner = {"classifier.0": cells}
        # torchvision's VGG initialisation (init_weights=True): with PyTorch's defaults the 4096-wide
        # classifier starts with large logits, and SGD at KE's learning rate diverged in a trial run
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def min_size(self) -> int:
        """The smallest input side the max-pools accept."""
        return 2 ** self.n_pools

    def forward(self, x):
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"VGG needs inputs of at least {self.min_size}x{self.min_size} ({self.n_pools} 2x2 "
                             f"max-pools), got {tuple(x.shape[-2:])}")
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, widths: tuple[int, ...] | None = None,
             hidden: int = 4096, dropout: float = 0.5) -> VGG:
    """VGG11-BN (132.9 M parameters at 1000 classes), torchvision's layout and names."""
    return VGG(VGG11_CFG, num_classes=num_classes, in_channels=in_channels, widths=widths, hidden=hidden,
               dropout=dropout)


def build(name: str, num_classes: int, in_channels: int, *, width: int | None = None) -> nn.Module:
    """A network by name; ``width`` is DigitsCNN's base width (default 32; ignored by the others)."""
    if name == "digits_cnn":
        return DigitsCNN(num_classes, in_channels, width=32 if width is None else width)
    if name == "wrn28_2":
        return WideResNet(num_classes, 28, 2, in_channels)
    if name == "resnet18":
        return resnet18(num_classes, in_channels)
    if name == "vgg11_bn":
        return vgg11_bn(num_classes, in_channels)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(map(repr, MODELS))}")

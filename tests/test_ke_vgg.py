"""VGG11-BN (the KE paper's CUB-200 network): torchvision's layout and parameter count, its KELS masks
(the first classifier layer split by the channels of the flattened 512 x 7 x 7 map), the slim network,
the generation boundary, and a KE run with ``--model vgg11_bn``."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import fastsmall as fs
from fastsmall.methods import ke
from fastsmall.methods.common import ConfigError, validate_config
from fastsmall.methods.models import VGG, build, vgg11_bn
from fastsmall.ops import KELS, WELS
from pipeline_helpers import KE_TINY, one_thread, run_main  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(widths=(6, 8, 10, 10, 12, 12, 12, 12), hidden=20)  # every layer split, cheap on 32-64 px


def _vgg11_bn_params(widths, hidden, classes, in_channels=3):
    """torchvision's vgg11_bn parameter count from the layer shapes: convs (with bias), BatchNorm
    (weight, bias), Linear(C*7*7, h), Linear(h, h), Linear(h, classes) (with bias)."""
    total, cin = 0, in_channels
    for w in widths:
        total += w * cin * 9 + w + 2 * w
        cin = w
    return total + (cin * 49 * hidden + hidden) + (hidden * hidden + hidden) + (hidden * classes + classes)


def test_vgg11_bn_has_torchvisions_layout_names_and_parameter_count():
    with torch.device("meta"):  # 132.9 M parameters: counted without allocating them
        model = vgg11_bn()
    count = sum(p.numel() for p in model.parameters())
    assert count == _vgg11_bn_params((64, 128, 256, 256, 512, 512, 512, 512), 4096, 1000) == 132_868_840
    convs = (0, 4, 8, 11, 15, 18, 22, 25)  # torchvision's indices in `features` for cfg "A" with BatchNorm
    expected = [f"features.{i + d}.{p}" for i in convs for d in (0, 1) for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert [n for n, _ in model.named_parameters()] == expected
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [3, 7, 14, 21, 28]
    assert tuple(model.classifier[0].weight.shape) == (4096, 512 * 7 * 7)
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    with torch.device("meta"):
        assert sum(p.numel() for p in build("vgg11_bn", 200, 3).parameters()) == \
            _vgg11_bn_params((64, 128, 256, 256, 512, 512, 512, 512), 4096, 200)

    small = vgg11_bn(num_classes=7, in_channels=1, **TINY)
    assert sum(p.numel() for p in small.parameters()) == _vgg11_bn_params(TINY["widths"], 20, 7, in_channels=1)
    assert small(torch.randn(2, 1, 32, 32)).shape == (2, 7)  # five pools to 1x1, the adaptive pool to 7x7
    assert small(torch.randn(2, 1, 45, 70)).shape == (2, 7)
    with pytest.raises(ValueError, match="at least 32x32"):
        small(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="8 positive ints"):
        vgg11_bn(widths=(64, 128))


def test_vgg11_bn_kels_masks_follow_the_official_split():
    with torch.device("meta"):
        model = vgg11_bn(num_classes=200)
    masks = ke.split_masks(model, 0.5, mode="kels")
    assert list(masks) == [n for n, p in model.named_parameters()
                           if n.endswith(".weight") and p.dim() in (2, 4)]  # no BatchNorm, no biases
    assert masks["features.0.weight"] == KELS(32, 3)  # the stem keeps the image channels
    assert masks["features.4.weight"] == KELS(64, 32) and masks["features.25.weight"] == KELS(256, 256)
    # the flattened 512 x 7 x 7 input, channel-major: the leading 256 channels' 49 cells each
    assert masks["classifier.0.weight"] == KELS(2048, 256 * 49)
    assert masks["classifier.3.weight"] == KELS(2048, 2048)
    assert masks["classifier.6.weight"] == KELS(200, 2048)  # the last layer keeps every class
    # at the paper's KELS rate 0.8: whole channels (ceil(0.8 * 512) = 410), not ceil(0.8 * 25088) columns
    masks = ke.split_masks(model, 0.8, mode="kels")
    assert masks["features.0.weight"] == KELS(52, 3) and masks["features.4.weight"] == KELS(103, 52)
    assert masks["classifier.0.weight"] == KELS(3277, 410 * 49)
    assert masks["classifier.6.weight"] == KELS(200, 3277)
    wels = ke.split_masks(model, 0.7, mode="wels", seed=3)
    assert list(wels) == list(masks) and all(isinstance(m, WELS) and m.rate == 0.7 for m in wels.values())
    assert len({m.seed for m in wels.values()}) == len(wels)

    with torch.device("meta"):
        slim = ke.slim_architecture(model, 0.5)
    assert isinstance(slim, VGG) and slim.widths == (32, 64, 128, 128, 256, 256, 256, 256) and slim.hidden == 2048
    shapes = {n: tuple(p.shape) for n, p in slim.named_parameters()}
    masks = ke.split_masks(model, 0.5, mode="kels")
    assert all(shapes[n][:2] == (m.k_out, m.k_in) for n, m in masks.items())
    assert [n for n, _ in slim.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert sum(p.numel() for p in slim.parameters()) == _vgg11_bn_params(slim.widths, 2048, 200)


def test_kels_inner_is_checked():
    model = vgg11_bn(num_classes=3, **TINY)
    model.kels_inner = {"classifier.0": 5}
    with pytest.raises(ValueError, match="does not divide the layer's 588 inputs"):
        ke.split_masks(model, 0.5)
    model.kels_inner = {"classifier.9": 49}
    with pytest.raises(ValueError, match="not a conv or linear layer"):
        ke.split_masks(model, 0.5)


@pytest.mark.parametrize("split_rate", [0.5, 0.3])
def test_vgg_slim_network_is_vgg_with_the_leading_slices(split_rate):
    """VGG's own part of the slim network (slim == dense with zero cross-connections is tested with the
    other networks in test_ke_pipeline.py): narrowed widths and hidden size, leading slices of every
    tensor, and whole channels of the pooled map in the first classifier layer (cells c*49 .. c*49+48)."""
    torch.manual_seed(0)
    model = vgg11_bn(num_classes=7, **TINY).double().eval()
    masks = ke.split_masks(model, split_rate)
    slim = ke.extract_slim(model, split_rate)
    assert isinstance(slim, VGG) and slim.training is False and next(slim.parameters()).dtype == torch.float64
    assert slim.widths == tuple(math.ceil(split_rate * w) for w in TINY["widths"])
    assert slim.hidden == math.ceil(split_rate * 20)
    for name, t in slim.state_dict().items():  # leading slices, BatchNorm statistics included
        src = model.state_dict()[name]
        assert torch.equal(t, src[tuple(slice(0, n) for n in t.shape)] if t.dim() else src), name
    k = math.ceil(split_rate * 12)
    assert masks["classifier.0.weight"].k_in == k * 49
    assert slim.classifier[0].in_features == k * 49


def test_vgg_kels_keeps_whole_channels_of_the_pooled_map():
    """The generation boundary itself is tested with the other networks in test_ke_pipeline.py; here the
    first classifier layer's KELS mask: the fit columns are whole channels (49 cells each)."""
    model = vgg11_bn(num_classes=5, **TINY)
    masks = ke.split_masks(model, 0.5, mode="kels")
    keep = fs.reference.ke_keep_mask(model.classifier[0].weight.shape, masks["classifier.0.weight"])
    assert keep.shape == (20, 12 * 49) and keep[:10, :6 * 49].all() and keep.sum() == 10 * 6 * 49


def _image_tree(root, classes=3, per_class=4, size=(36, 40)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 40, (*size, 3)) + np.eye(3, dtype=np.int64)[c] * 200
            Image.fromarray(img.astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")


def test_ke_runs_vgg11_bn_on_an_image_folder(tmp_path, monkeypatch):
    """--model vgg11_bn through the whole pipeline; the network is narrowed (the full one is 133 M
    parameters and ~50 s for this run on one thread) by patching the builder the trainer calls."""
    import fastsmall.methods.common.generations as generations

    built = []

    def narrow_build(name, num_classes, in_channels, *, width=None):
        assert name == "vgg11_bn"
        built.append(vgg11_bn(num_classes, in_channels, **TINY))
        return built[-1]

    monkeypatch.setattr(generations, "build_model", narrow_build)
    _image_tree(tmp_path / "data" / "train")
    _image_tree(tmp_path / "data" / "test", per_class=2)
    cfg = ke.Config(out=str(tmp_path / "run"), **{**KE_TINY, "dataset": "imagefolder", "data": str(tmp_path / "data"),
                                                 "per_class": None, "image_size": 32, "epochs": 1,
                                                 "batch_size": 4, "model": "vgg11_bn"})
    result = ke.train(cfg)
    assert len(built) == 1 and result["generations"] == 2 and len(result["per_generation"]) == 2
    assert result["slim_test_accuracy"] is not None
    assert result["dense"]["params"] == _vgg11_bn_params(TINY["widths"], 20, 3)
    slim = result.models["slim"]
    assert isinstance(slim, VGG) and slim.widths == (3, 4, 5, 5, 6, 6, 6, 6) and slim.hidden == 10
    assert result["slim"]["params"] == sum(p.numel() for p in slim.parameters()) < result["dense"]["params"]


@pytest.mark.parametrize("changes, message", [
    ({}, r"model 'vgg11_bn' needs images of at least 32 px \(five 2x2 max-pools\), got dataset 'digits-small'"),
    ({"dataset": "imagefolder", "data": "x", "image_size": 28}, "got image_size 28"),
    ({"dataset": "imagefolder", "data": "x", "seeds": [0, 1]}, "seeds cannot stack its replicas"),
    ({"dataset": "imagefolder", "data": "x", "seeds": [3]}, "seeds cannot stack its replicas"),
])
def test_vgg11_bn_config_rules(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(ke.Config(model="vgg11_bn", **changes))
    validate_config(ke.Config(model="vgg11_bn", dataset="imagefolder", data="x", image_size=32))
    assert ke.Config(model="vgg11_bn", dataset="imagefolder", data="x").model_name == "vgg11_bn"
    assert ke.Config(dataset="imagefolder", data="x").model_name == "resnet18"  # auto never picks it


def test_cli_takes_model_vgg11_bn(tmp_path, capsys):
    code, _, err = run_main("ke", ["--model", "vgg11_bn", "--out", tmp_path / "run"], capsys)
    assert code != 0 and "--model 'vgg11_bn' needs images of at least 32 px" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_main("dsd", ["--model", "vgg11_bn", "--dataset", "imagefolder", "--data", tmp_path,
                                    "--image-size", "16", "--out", tmp_path / "dsd"], capsys)
    assert code != 0 and "got --image-size 16" in err

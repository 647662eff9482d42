import json
import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch.utils.flop_counter import FlopCounterMode

import rsvheat
from rsvheat.errors import BandCountMismatchError, UnknownModalityError
from rsvheat.layers.dht import dht2d
from rsvheat.layers.spectral_mixer import (
    LocalGlobalMixer,
    SpectralFilter,
    SpectralSizeError,
    resize_spectral_weight,
)
from rsvheat.models.heracles import ConvFFN, Heracles, HeraclesBlock, checkpoint_filter_fn


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _filters(model: torch.nn.Module) -> list[SpectralFilter]:
    return [m for m in model.modules() if isinstance(m, SpectralFilter)]


# --- spectral mixer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", ["dct", "dht"])
def test_global_branch_with_unit_weight_is_identity(transform):
    filt = SpectralFilter(6, (14, 10), transform)
    with torch.no_grad():
        filt.weight.fill_(1.0)
    x = torch.randn(2, 6, 14, 10)
    assert (filt(x) - x).abs().max() <= 1e-5


def test_local_half_is_the_depthwise_conv():
    mixer = LocalGlobalMixer(8, (12, 12))
    x = torch.randn(2, 8, 12, 12)
    out = mixer(x)
    expected = torch.nn.functional.conv2d(x[:, :4], mixer.local.weight, mixer.local.bias, padding=1, groups=4)
    assert torch.allclose(out[:, 0::2], expected, atol=1e-6)
    assert torch.allclose(out[:, 1::2], mixer.global_filter(x[:, 4:]), atol=1e-6)


def test_interleave_by_zeroing_one_half():
    mixer = LocalGlobalMixer(8, (10, 10))
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        mixer.local.weight.zero_()
        mixer.local.bias.zero_()
    out = mixer(x)
    assert out[:, 0::2].abs().max() == 0 and out[:, 1::2].abs().max() > 0
    mixer = LocalGlobalMixer(8, (10, 10))
    with torch.no_grad():
        mixer.global_filter.weight.zero_()
    out = mixer(x)
    assert out[:, 1::2].abs().max() == 0 and out[:, 0::2].abs().max() > 0
    # global channel i only depends on input channel C/2 + i
    x2 = x.clone()
    x2[:, 4 + 1] += 1.0
    mixer = LocalGlobalMixer(8, (10, 10))
    diff = (mixer(x2) - mixer(x)).abs().amax(dim=(0, 2, 3))
    assert diff.nonzero().flatten().tolist() == [3]  # channel 2·1 + 1


def test_unnormalised_and_orthonormal_dct_pair_agree():
    filt = SpectralFilter(3, (16, 12), "dct")
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    weight = filt.weight.detach().double().numpy()
    coeffs = scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm=None)  # upstream's unnormalised pair
    expected = scipy.fft.idctn(coeffs * weight, type=2, axes=(-2, -1), norm=None)
    assert np.abs(filt(x.float()).detach().double().numpy() - expected).max() <= 1e-5


def test_dct_dc_only_filter_keeps_a_constant_image():
    filt = SpectralFilter(2, (9, 13), "dct")
    with torch.no_grad():
        filt.weight.zero_()
        filt.weight[:, 0, 0] = 1.0
    x = torch.full((1, 2, 9, 13), 3.5)
    assert (filt(x) - x).abs().max() <= 1e-5


def test_dht_with_even_weight_is_circular_convolution():
    height, width = 12, 10
    w = torch.randn(2, height, width, dtype=torch.float64)
    w = 0.5 * (w + torch.roll(torch.flip(w, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1)))  # W[k] = W[-k mod N]
    filt = SpectralFilter(2, (height, width), "dht")
    with torch.no_grad():
        filt.weight.copy_(w.float())
    x = torch.randn(1, 2, height, width, dtype=torch.float64)
    h = dht2d(w) / math.sqrt(height * width)
    # circular convolution (x ⊛ h)[p] = Σ_q x[q] h[p − q]
    expected = torch.fft.ifft2(torch.fft.fft2(x) * torch.fft.fft2(h)).real
    assert (filt(x.float()).double() - expected).abs().max() <= 1e-5


# --- sizing and policies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", ["dct", "dht"])
def test_strict_raises_and_interpolate_runs(transform):
    strict = rsvheat.create_model("heracles_test", transform=transform, spectral_size_policy="strict").eval()
    with pytest.raises(SpectralSizeError, match=r"16×16 grid but the input grid is 12×10.*interpolate"):
        strict(torch.randn(1, 3, 48, 40))
    loose = rsvheat.create_model("heracles_test", transform=transform, spectral_size_policy="interpolate").eval()
    loose.load_state_dict(strict.state_dict())
    out = loose(torch.randn(2, 3, 48, 40))
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    x = torch.randn(2, 3, 64, 64)  # the built size: identical to strict
    with torch.no_grad():
        assert torch.equal(loose(x), strict(x))


@pytest.mark.parametrize("transform", ["dct", "dht"])
def test_resize_to_same_size_is_identity_and_constant_stays_constant(transform):
    weight = torch.randn(4, 14, 9)
    assert resize_spectral_weight(weight, (14, 9), transform) is weight
    resized = resize_spectral_weight(torch.full((2, 14, 9), 0.7), (20, 16), transform)
    assert resized.shape == (2, 20, 16) and torch.allclose(resized, torch.full_like(resized, 0.7))


def test_dht_resize_shifts_around_the_zero_frequency():
    # A weight peaked at DC (index 0, FFT order) must stay peaked at DC after resizing.
    weight = torch.zeros(1, 8, 8)
    weight[0, 0, 0] = 1.0
    resized = resize_spectral_weight(weight, (16, 16), "dht")
    assert resized[0].argmax().item() == 0


def test_eval_cache_follows_in_place_updates():
    filt = SpectralFilter(2, (8, 8), "dct", "interpolate").eval()
    x = torch.randn(1, 2, 12, 12)
    with torch.no_grad():
        first = filt(x)
        assert torch.equal(filt(x), first) and len(filt._cache) == 1
        filt.weight.mul_(2.0)
        assert torch.allclose(filt(x), 2 * first, atol=1e-6)
    filt.train()
    assert not filt._cache


def test_interpolate_in_training_keeps_gradients():
    filt = SpectralFilter(2, (8, 8), "dht", "interpolate")
    filt(torch.randn(1, 2, 11, 5)).sum().backward()
    assert filt.weight.grad is not None and filt.weight.grad.abs().sum() > 0


def test_invalid_options_list_valid_ones():
    with pytest.raises(ValueError, match="'dct', 'dht'"):
        SpectralFilter(2, (4, 4), "dft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'strict', 'interpolate'"):
        SpectralFilter(2, (4, 4), "dct", "pad")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (320, 256)])
def test_weights_built_for_input_size_run_strict(size):
    model = rsvheat.create_model("heracles_test", img_size=list(size), spectral_size_policy="strict").eval()
    stage1, stage2 = (model.stages[i].blocks[0].mixer.global_filter for i in (0, 1))
    assert stage1.weight.shape == (8, size[0] // 4, size[1] // 4)
    assert stage2.weight.shape == (16, size[0] // 8, size[1] // 8)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]


def test_bf16_autocast_runs_global_branch_in_fp32():
    model = rsvheat.create_model("heracles_test").eval()
    seen = []

    def hook(module, inputs, output):
        seen.append((inputs[0].dtype, output.dtype, torch.is_autocast_enabled("cpu")))

    handles = [f.register_forward_hook(hook) for f in _filters(model)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.forward_features(x)
    for handle in handles:
        handle.remove()
    assert len(seen) == 2 and all(s == (torch.float32, torch.float32, False) for s in seen)
    assert all(torch.isfinite(f).all() for f in feats)
    block = model.stages[0].blocks[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = block.mixer(torch.randn(1, 16, 16, 16))
    assert mixed.dtype == torch.bfloat16


# --- parameter counts and layout ------------------------------------------------------------------------------------

# docs/heracles.md §Reference numbers: backbone @224, backbone @256, with CA block + head + aux head @224 (1000 classes)
SPEC_COUNTS = {
    "heracles_small": (18_366_240, 18_519_840, 21_678_512, 32),
    "heracles_base": (28_326_080, 28_479_680, 32_504_464, 64),
    "heracles_large": (49_504_672, 49_781_152, 53_683_056, 64),
}


@pytest.mark.parametrize("name", sorted(SPEC_COUNTS))
def test_parameter_counts_match_spec(name):
    at_224, at_256, with_heads, stem_hidden = SPEC_COUNTS[name]
    with torch.device("meta"):  # shapes only: no allocation, no init cost
        assert _count(rsvheat.create_model(name, in_chans=3)) == at_224
        assert _count(rsvheat.create_model(name, in_chans=3, img_size=256)) == at_256
        full = rsvheat.create_model(name, in_chans=3, num_classes=1000, use_cls_head=True, aux_head=True)
        assert _count(full) == with_heads
        assert _count(rsvheat.create_model(name, in_chans=13)) == at_224 + 10 * 49 * stem_hidden


def test_large_builds_and_runs():
    with torch.device("meta"):
        model = rsvheat.create_model("heracles_large", in_chans=3)
    assert model.stages[0].blocks[0].mixer.global_filter.weight.shape == (48, 56, 56)
    assert model.stages[1].blocks[0].mixer.global_filter.weight.shape == (96, 28, 28)
    assert sum(f.weight.numel() for f in _filters(model)) == 903_168
    # The widths of L (C1 = 96, where the public code has no branch), one block per stage to keep CI fast.
    model = rsvheat.create_model("heracles_large", in_chans=3, depths=(1, 1, 1, 1), img_size=64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 512) and torch.isfinite(out).all()


def test_base_any_chip_size_and_layout():
    with torch.device("meta"):  # layout checks need shapes only
        model = rsvheat.create_model("heracles_base", in_chans={"optical": 13})
    assert sum(f.weight.numel() for f in _filters(model)) == 501_760
    hidden = [stage.blocks[0].mlp.fc1.out_features for stage in model.stages]
    assert hidden == [8 * 64, 8 * 128, 4 * 320, 4 * 512]
    assert [stage.blocks[0].mlp.dwconv.groups for stage in model.stages] == hidden
    for stage in model.stages[2:]:
        assert not _filters(stage)
        assert all(block.mixer.q.out_features // block.mixer.num_heads == 32 for block in stage.blocks)
    # B's widths, heads and ratios with one block per stage keep the forward cheap.
    model = rsvheat.create_model("heracles_base", in_chans={"optical": 13}, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 13, 40, 72))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 10, 18), (1, 128, 5, 9), (1, 320, 3, 5), (1, 512, 2, 3)]


def test_spectral_stages_switch():
    model = rsvheat.create_model("heracles_test", spectral_stages=0)
    assert not _filters(model)
    model = rsvheat.create_model("heracles_test", spectral_stages=3)
    assert len(_filters(model)) == 3
    with pytest.raises(ValueError, match="spectral_stages"):
        rsvheat.create_model("heracles_test", spectral_stages=5)


@pytest.mark.parametrize("bands", [2, 10, 12, 13])
def test_in_chans_changes_only_stem_conv1(bands):
    reference = {k: v.shape for k, v in rsvheat.create_model("heracles_test", in_chans=3).state_dict().items()}
    model = rsvheat.create_model("heracles_test", in_chans=bands)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes.keys() == reference.keys()
    assert [k for k in shapes if shapes[k] != reference[k]] == ["stems.optical.conv1.weight"]
    assert shapes["stems.optical.conv1.weight"] == (8, bands, 7, 7)


# --- backbone interface ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multimodal():
    torch.manual_seed(0)
    return rsvheat.create_model("heracles_test", in_chans={"sar": 2, "optical": 13}).eval()


def test_interface_attributes(multimodal):
    assert multimodal.modalities == ("sar", "optical")
    assert multimodal.in_chans == {"sar": 2, "optical": 13}
    assert multimodal.default_modality == "optical"
    assert multimodal.num_features == 64
    assert multimodal.feature_info == [
        {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
        for i, (c, r) in enumerate(zip((16, 32, 48, 64), (4, 8, 16, 32), strict=True))
    ]
    for info in multimodal.feature_info:
        multimodal.get_submodule(info["module"])
    sar_only = rsvheat.create_model("heracles_test", in_chans={"sar": 2, "s1b": 2})
    assert sar_only.default_modality == "sar"


def test_features_match_feature_info_for_each_modality(multimodal):
    x = {"optical": torch.randn(2, 13, 64, 48), "sar": torch.randn(2, 2, 64, 48)}
    with torch.no_grad():
        for name, tensor in x.items():
            feats = multimodal.forward_features(tensor, modality=name if name == "sar" else None)
            for f, info in zip(feats, multimodal.feature_info, strict=True):
                assert f.shape == (2, info["num_chs"], 64 // info["reduction"], math.ceil(48 / info["reduction"]))
        feats = multimodal.forward_features(x["optical"])
        inter = multimodal.forward_intermediates(x["optical"], indices=[-1, 1])
        assert [f.shape for f in inter] == [feats[1].shape, feats[3].shape]
        assert torch.equal(inter[1], feats[3])
        assert len(multimodal.forward_intermediates(x["optical"], indices=2)) == 2
        pooled = multimodal.forward_head(feats[-1], pre_logits=True)
        assert torch.allclose(pooled, feats[-1].mean(dim=(2, 3)))
        assert torch.equal(multimodal(x["optical"]), pooled)
    with pytest.raises(ValueError, match="out of range"):
        multimodal.forward_intermediates(x["optical"], indices=[4])


def test_modality_errors(multimodal):
    with pytest.raises(BandCountMismatchError, match=r"'optical' expects 13 bands but the input has 12"):
        multimodal(torch.randn(1, 12, 32, 32))
    with pytest.raises(UnknownModalityError, match="'s2'"):
        multimodal(torch.randn(1, 13, 32, 32), modality="s2")


def test_shared_trunk_between_stems(multimodal):
    stems = dict(multimodal.stems.items())
    assert set(stems) == {"sar", "optical"}
    trunk = {id(p) for n, p in multimodal.named_parameters() if not n.startswith("stems.")}
    assert trunk and all(id(p) not in trunk for p in multimodal.stems.parameters())


def test_classifier_cls_head_and_reset():
    model = rsvheat.create_model("heracles_test", num_classes=7, use_cls_head=True, aux_head=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        cls_logits, token_logits = model.forward_token_labeling(model.forward_features(x)[-1])
    assert logits.shape == (2, 7) and token_logits.shape == (2, 4, 7)
    assert torch.allclose(logits, cls_logits + 0.5 * token_logits.amax(dim=1), atol=1e-6)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.aux_head.out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 64) and model.aux_head is None


def test_forward_backward_and_grad_checkpointing_match():
    torch.manual_seed(0)
    model = rsvheat.create_model("heracles_test", num_classes=5, drop_path_rate=0.1, transform="dht")
    model.train()
    for m in model.modules():  # deterministic comparison: no drop path, frozen BN statistics
        if isinstance(m, torch.nn.BatchNorm2d | rsvheat.layers.drop.DropPath):
            m.eval()
    x = torch.randn(2, 3, 48, 64)
    out = model(x)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["stages.0.blocks.0.mixer.global_filter.weight"].abs().sum() > 0
    model.zero_grad()
    with pytest.raises(ValueError, match="whole blocks only"):
        model.set_grad_checkpointing("mlp")  # type: ignore[arg-type]
    model.set_grad_checkpointing("blocks")
    calls = []
    model.stages[0].blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    out_ckpt = model(x)
    out_ckpt.square().sum().backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    assert torch.allclose(out, out_ckpt, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5), n


def test_kwargs_are_json_and_rebuild_the_model(tmp_path):
    model = rsvheat.create_model(
        "heracles_test", in_chans={"optical": 4, "sar": 2}, img_size=(48, 64), transform="dht", num_classes=2
    )
    kwargs = json.loads(json.dumps(model.model_kwargs))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.model_name, "model_kwargs": kwargs, "state_dict": model.state_dict()}, path)
    ckpt = torch.load(path)
    rebuilt = rsvheat.create_model(ckpt["model"], **ckpt["model_kwargs"])
    rebuilt.load_state_dict(ckpt["state_dict"])
    model.eval()
    rebuilt.eval()
    x = torch.randn(1, 2, 48, 64)
    with torch.no_grad():
        assert torch.equal(model(x, modality="sar"), rebuilt(x, modality="sar"))
    assert not any("cache" in key for key in ckpt["state_dict"])


def test_block_and_ffn_work_in_1d():
    block = HeraclesBlock(8, 2, "spectral", (12,))
    assert block(torch.randn(2, 12, 8), (12,)).shape == (2, 12, 8)
    assert isinstance(ConvFFN(8, 16, ndim=1).dwconv, torch.nn.Conv1d)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="4 entries"):
        Heracles(dims=(16, 32, 48))
    with pytest.raises(ValueError, match="band count"):
        Heracles(in_chans={"optical": 0})
    with pytest.raises(ValueError, match="img_size"):
        Heracles(img_size=(64, 64, 3))
    with pytest.raises(ValueError, match="even"):
        LocalGlobalMixer(7, (4, 4))


def _to_upstream_key(key: str) -> str:
    """Our key -> the upstream sct.py name, written out by hand from the upstream module layout."""
    stem = {"conv1": "conv.0", "bn1": "conv.1", "conv2": "conv.3", "bn2": "conv.4", "conv3": "conv.6", "bn3": "conv.7"}
    parts = key.split(".")
    if parts[0] == "stems":
        return f"patch_embed1.{stem.get(parts[2], parts[2])}.{'.'.join(parts[3:])}"
    if parts[0] == "cls_block":
        return "post_network.0." + ".".join(parts[1:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2.")
    if parts[0] != "stages":
        return key
    stage = int(parts[1]) + 1
    if parts[2] == "downsample":
        return f"patch_embed{stage}.{'proj' if parts[3] == '0' else 'norm'}.{parts[4]}"
    if parts[2] == "norm":
        return f"norm{stage}.{parts[3]}"
    rest = ".".join(parts[4:])
    for ours, theirs in (("mixer.local.", "attn.conv."), ("mixer.global_filter.", "attn."), ("mixer.", "attn.")):
        rest = rest.replace(ours, theirs)
    return f"block{stage}.{parts[3]}.{rest.replace('mlp.dwconv.', 'mlp.dwconv.dwconv.')}"


def test_checkpoint_filter_fn_maps_upstream_keys():
    model = rsvheat.create_model("heracles_test", num_classes=5, use_cls_head=True, aux_head=True)
    ours = model.state_dict()
    upstream = {_to_upstream_key(k): v for k, v in ours.items()}
    expected = (
        "patch_embed1.conv.7.running_var",
        "patch_embed2.norm.weight",
        "block1.0.attn.weight",
        "block2.0.attn.conv.bias",
        "block3.0.attn.kv.weight",
        "block4.0.mlp.dwconv.dwconv.weight",
        "norm4.bias",
        "post_network.0.mlp.fc2.weight",
        "aux_head.weight",
    )
    assert all(key in upstream for key in expected)
    mapped = checkpoint_filter_fn(upstream, model)
    assert mapped.keys() == ours.keys()
    assert all(mapped[k] is ours[k] for k in ours)
    assert checkpoint_filter_fn(ours, model).keys() == ours.keys()


def test_base_macs_at_224_within_five_percent_of_spec():
    # docs/heracles.md §Reference numbers, B: 6.71 GMAC counting conv, linear, attention and dense DCT; a sanity check
    # on meta tensors.
    with torch.device("meta"):
        model = rsvheat.create_model("heracles_base", in_chans=3)
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 224, 224))
    assert abs(counter.get_total_flops() / 2e9 / 6.71 - 1) <= 0.05

"""vHeat / RS-vHeat backbones: counts, GMACs, shapes, modalities, inference mode, caches
(docs/hco.md §Test tolerances)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import rsvheat
from rsvheat.errors import BandCountMismatchError, DecayNotAvailableError, UnknownModalityError
from rsvheat.models.vheat import Mlp2d, VHeat, VHeatBlock, count_parameters, resize_embeddings, stage_sizes

TEST_MODELS = ["vheat_test", "rsvheat_test"]

# docs/hco.md §Reference numbers: (training mode, inference mode) parameters; (training, inference) GMAC at 224.
SPEC_COUNTS = {
    "vheat_tiny": (30_853_480, 29_558_056),
    "vheat_small": (52_220_392, 50_054_056),
    "vheat_base": (92_132_328, 87_498_984),
}
SPEC_GMAC = {"vheat_tiny": (4.91, 4.56), "vheat_small": (9.13, 8.43), "vheat_base": (16.10, 14.87)}


def _meta_model(name: str, **kwargs: object) -> VHeat:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return rsvheat.create_model(name, **kwargs)


def _spec_model(name: str, **kwargs: object) -> VHeat:
    """The network the spec counts: upstream's 1000-class ImageNet classifier (registry default is num_classes=0)."""
    return _meta_model(name, num_classes=1000, **kwargs)


def _build(name: str, seed: int = 0, **kwargs: object) -> VHeat:
    torch.manual_seed(seed)
    return rsvheat.create_model(name, **kwargs)


@pytest.fixture
def interpolate_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Record every F.interpolate call (input shape) while still running the real function."""
    calls: list[tuple[int, ...]] = []
    real = F.interpolate

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    return calls


# --- registry and interface -------------------------------------------------------------------------------------
def test_variants_are_registered_and_record_json_kwargs() -> None:
    for name in ["vheat_tiny", "vheat_small", "vheat_base", "rsvheat_base", *TEST_MODELS]:
        assert rsvheat.is_model(name)
    model = rsvheat.create_model("vheat_test", in_chans={"optical": 13, "sar": 2}, img_size=[48, 64], fixed_k=None)
    assert model.model_name == "vheat_test"
    assert json.loads(json.dumps(model.model_kwargs)) == {"in_chans": {"optical": 13, "sar": 2}, "img_size": [48, 64]}
    assert model.modalities == ("optical", "sar") and model.default_modality == "optical"
    assert model.in_chans == {"optical": 13, "sar": 2}
    assert rsvheat.create_model("vheat_test", in_chans={"s2": 12, "s1": 2}).default_modality == "s2"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_backward_and_feature_info(name: str) -> None:
    model = _build(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert [f.shape[1] for f in features] == [info["num_chs"] for info in model.feature_info]
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert [64 // f.shape[-1] for f in features] == [4, 8, 16, 32]
    for info in model.feature_info:
        model.get_submodule(info["module"])
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("stems.sar")]
    assert missing == []
    assert model.num_features == features[-1].shape[1]


def test_forward_intermediates_indices_and_heads() -> None:
    model = _build("vheat_test", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    full = model.forward_features(x)
    assert [t.shape for t in model.forward_intermediates(x, indices=2)] == [t.shape for t in full[2:]]
    picked = model.forward_intermediates(x, indices=[0, -1])
    assert torch.equal(picked[0], full[0]) and torch.equal(picked[1], full[3])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    pooled = model.forward_head(full[-1], pre_logits=True)
    assert pooled.shape == (1, model.num_features)
    assert torch.allclose(model.forward_head(full[-1]), model(x), atol=1e-6)
    model.reset_classifier(0)
    assert torch.allclose(model(x), pooled, atol=1e-6)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)


def test_registry_default_is_the_backbone_without_classifier_and_dense_norms_are_opt_in() -> None:
    classifier = _spec_model("vheat_tiny")
    backbone = _meta_model("vheat_tiny")
    dense = _meta_model("vheat_tiny", dense_norms=True)
    assert backbone.num_classes == 0 and not backbone.dense_norms and dense.dense_norms
    # The backbone drops the 1000-way Linear; dense_norms adds outnorms on stages 0–2.
    assert count_parameters(backbone) == count_parameters(classifier) - (768 * 1000 + 1000)
    assert count_parameters(dense) == count_parameters(backbone) + 2 * (96 + 192 + 384)
    model = _build("vheat_test", dense_norms=True).eval()
    with torch.no_grad():
        for f in model.forward_features(torch.randn(1, 3, 48, 40)):  # every map leaves a LayerNorm at init
            assert f.mean(dim=1).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["vheat_test", "rsvheat_test"])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(name: str) -> None:
    model = _build(name, drop_path_rate=0.0)
    x = torch.randn(2, 3, 48, 40)
    calls: list[str] = []
    model.stages[0].blocks[0].register_forward_pre_hook(lambda *_: calls.append("block"))
    model.stages[0].blocks[0].mlp.register_forward_pre_hook(lambda *_: calls.append("mlp"))
    outputs, grads, block_calls = [], [], []
    for enable in (False, True, "mlp"):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        calls.clear()
        out = model(x)
        out.sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        block_calls.append(calls.copy())
    # Checkpointing recomputes the block in the backward pass; the "mlp" policy recomputes only its MLP.
    assert block_calls == [["block", "mlp"], ["block", "mlp"] * 2, ["block", "mlp", "mlp"]]
    for other in (1, 2):
        assert torch.allclose(outputs[0], outputs[other], atol=1e-6)
        assert grads[0].keys() == grads[other].keys() and "stages.0.fve" in grads[0]
        for name, grad in grads[0].items():
            assert torch.allclose(grad, grads[other][name], atol=1e-6), name
    with pytest.raises(ValueError, match="'blocks' or 'mlp'"):
        model.set_grad_checkpointing("attention")  # type: ignore[arg-type]


def test_checkpoint_round_trip(tmp_path: pytest.TempPathFactory) -> None:
    model = _build("rsvheat_test", in_chans={"optical": 4, "sar": 2}).eval()
    path = tmp_path / "ckpt.pt"  # type: ignore[operator]
    torch.save({"model": model.model_name, "model_kwargs": model.model_kwargs, "state_dict": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    rebuilt = rsvheat.create_model(ckpt["model"], **ckpt["model_kwargs"]).eval()
    rebuilt.load_state_dict(ckpt["state_dict"])
    x = torch.randn(1, 2, 40, 56)
    assert torch.equal(model(x, modality="sar"), rebuilt(x, modality="sar"))


# --- parameter counts and GMACs (docs/hco.md §Reference numbers) ------------------------------------------------------
@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_parameter_counts_match_the_spec(name: str) -> None:
    model = _spec_model(name)
    train, inference = SPEC_COUNTS[name]
    assert count_parameters(model, "train") == train
    assert count_parameters(model, "inference") == inference
    width = model.dims[0]
    assert count_parameters(_spec_model(name, in_chans=13)) - train == 10 * 9 * width // 2


def test_tiny_with_13_bands_and_rs_vheat_counts() -> None:
    assert count_parameters(_spec_model("vheat_tiny", in_chans=13)) == 30_857_800
    rs = _spec_model("rsvheat_base", in_chans=3)
    sce = sum(r * r * c for r, c in zip((56, 28, 14, 7), (128, 256, 512, 1024), strict=True))
    norms = sum(2 * c * d for c, d in zip((128, 256, 512, 1024), (2, 2, 18, 2), strict=True))
    assert count_parameters(rs) - SPEC_COUNTS["vheat_base"][0] == sce + norms
    assert round((sce + norms) / 1e6, 2) == 0.78


@pytest.mark.parametrize("name", list(SPEC_GMAC))
def test_gmac_at_224_in_training_and_inference_mode(name: str) -> None:
    model = _spec_model(name).eval()
    x = torch.empty(1, 3, 224, 224, device="meta")
    train_ref, inference_ref = SPEC_GMAC[name]
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() / 2e9 == pytest.approx(train_ref, rel=0.01)
    model.fuse_decay()
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() / 2e9 == pytest.approx(inference_ref, rel=0.01)


# --- sizes and resizing (docs/hco.md §Resolution changes, §Test tolerances) -------------------------------------------
def test_any_input_size_runs_and_stage_sizes_follow_ceil(interpolate_calls: list[tuple[int, ...]]) -> None:
    model = _build("vheat_test", img_size=224).eval()
    with torch.no_grad():
        for height, width in [(224, 224), (256, 256), (320, 256), (200, 200), (50, 70)]:
            interpolate_calls.clear()
            features = model.forward_features(torch.randn(1, 3, height, width))
            assert [tuple(f.shape[-2:]) for f in features] == stage_sizes(height, width)
            resized = sum(size != native for size, native in zip(stage_sizes(height, width), stage_sizes(224, 224)))
            assert len(interpolate_calls) == resized  # a stage at its native size uses its FVE unchanged
            assert (resized == 0) == ((height, width) == (224, 224))
    assert stage_sizes(200, 200) == [(50, 50), (25, 25), (13, 13), (7, 7)]
    assert stage_sizes(50, 70) == [(13, 18), (7, 9), (4, 5), (2, 3)]


def test_conductivity_stays_non_negative_after_bicubic_resizing() -> None:
    model = _build("vheat_test")
    with torch.no_grad():
        for stage in model.stages:
            stage.fve.copy_(torch.randn_like(stage.fve).sign() * 3.0)  # sharp ±3 pattern: bicubic overshoots
            stage.blocks[0].hco.to_k.weight.copy_(torch.eye(stage.dim))
        for size in [(13, 7), (40, 9), (5, 31)]:
            for stage in model.stages:
                fve = stage.embedding("fve", *size)
                assert fve.shape == (*size, stage.dim)
                assert fve.abs().max().item() > 3.0  # the overshoot really happens
                assert (stage.blocks[0].hco.conductivity(fve) >= 0).all()


def test_eval_resize_cache_is_used_and_cleared(interpolate_calls: list[tuple[int, ...]]) -> None:
    model = _build("rsvheat_test").eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        first = model(x)
        count = len(interpolate_calls)
        assert count == 6  # FVE and SCE of stages 0–2; stage 3 is 2×2 as at the native 64 px
        assert torch.equal(model(x), first)
        assert len(interpolate_calls) == count  # served from the cache
        model.load_state_dict(model.state_dict())
        model(x)
        assert len(interpolate_calls) == 2 * count
        model.train().eval()
        model(x)
        assert len(interpolate_calls) == 3 * count
        for stage in model.stages:  # an eval-mode EMA copy is updated in place: no stale resize
            stage.fve.mul_(0.5)
            stage.sce.mul_(0.5)
        updated = model(x)
        assert len(interpolate_calls) == 4 * count and not torch.equal(updated, first)
    model.train()
    model(x)
    model(x)
    assert len(interpolate_calls) == 6 * count  # training mode never caches


def test_eval_decay_cache_follows_in_place_updates_of_to_k() -> None:
    model = _build("vheat_test").eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        before = model(x)
        for stage in model.stages:
            stage.blocks[0].hco.to_k.bias.add_(0.5)  # e.g. an EMA copy updated in place
        cached = model(x)
    assert not torch.allclose(cached, before)
    assert torch.allclose(cached, model(x).detach(), atol=1e-6)  # with autograd nothing is cached


def test_bilinear_fve_interp_and_bad_options() -> None:
    bicubic = _build("vheat_test").eval()
    bilinear = _build("vheat_test", fve_interp="bilinear").eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert not torch.allclose(bicubic(x), bilinear(x))
        assert torch.equal(bicubic(torch.randn(1, 3, 64, 64) * 0), bilinear(torch.zeros(1, 3, 64, 64)))
    with pytest.raises(ValueError, match="'bicubic' or 'bilinear'"):
        rsvheat.create_model("vheat_test", fve_interp="nearest")
    with pytest.raises(ValueError, match="'fp32' or 'autocast'"):
        rsvheat.create_model("vheat_test", hco_core_dtype="fp16")


def test_gradients_reach_fve_and_sce_at_a_new_size() -> None:
    model = _build("rsvheat_test")
    model(torch.randn(2, 3, 52, 36)).square().mean().backward()
    for stage in model.stages:
        assert stage.fve.grad is not None and stage.fve.grad.abs().sum() > 0
        assert stage.sce.grad is not None and stage.sce.grad.abs().sum() > 0


# --- modalities (docs/hco.md §RS-vHeat, §Test tolerances) -------------------------------------------------------------
@pytest.mark.parametrize("bands", [2, 4, 13])
def test_band_counts(bands: int) -> None:
    model = _build("vheat_test", in_chans=bands, num_classes=10)
    assert model(torch.randn(1, bands, 32, 48)).shape == (1, 10)


def test_two_modalities_share_the_trunk() -> None:
    model = _build("rsvheat_test", in_chans={"s2": 13, "s1": 2}).eval()
    seen: list[tuple[int, ...]] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append(tuple(p.data_ptr() for p in module.parameters()))

    hooks = [stage.register_forward_hook(record) for stage in model.stages]
    with torch.no_grad():
        s2 = model.forward_features(torch.randn(1, 13, 40, 40), modality="s2")
        s1 = model.forward_features(torch.randn(1, 2, 40, 40), modality="s1")
    for hook in hooks:
        hook.remove()
    assert seen[:4] == seen[4:]  # identical trunk tensors (data_ptr) for both modalities
    assert [f.shape for f in s2] == [f.shape for f in s1]
    assert model.stems["s2"].conv1.in_channels == 13 and model.stems["s1"].conv1.in_channels == 2
    assert model.default_modality == "s2"


def test_band_count_mismatch_and_unknown_modality_raise() -> None:
    model = _build("rsvheat_test", in_chans={"optical": 13, "sar": 2})
    with pytest.raises(BandCountMismatchError, match=r"'sar' expects 2 bands but the input has 3") as info:
        model(torch.randn(1, 3, 32, 32), modality="sar")
    assert isinstance(info.value, ValueError) and (info.value.expected, info.value.given) == (2, 3)
    with pytest.raises(ValueError, match="'optical' expects 13"):
        model.forward_features(torch.randn(1, 12, 32, 32))
    with pytest.raises(UnknownModalityError, match="'optical', 'sar'"):
        model(torch.randn(1, 2, 32, 32), modality="s1")


def test_sce_path_keeps_shapes() -> None:
    model = _build("rsvheat_test")
    assert all(stage.sce is not None for stage in model.stages)
    block = model.stages[1].blocks[0]
    x = torch.randn(2, 32, 11, 7)
    fve, sce = model.stages[1].embedding("fve", 11, 7), model.stages[1].embedding("sce", 11, 7)
    assert block(x, fve, sce.permute(2, 0, 1).unsqueeze(0)).shape == x.shape


# --- init, precision, inference mode, state dict -------------------------------------------------------------------
@pytest.mark.parametrize("dim", [96, 128])
def test_post_norm_block_at_init_is_near_identity(dim: int) -> None:
    torch.manual_seed(0)
    block = VHeatBlock(dim, post_norm=True, layer_scale_init=1e-5)
    fve = torch.nn.init.trunc_normal_(torch.empty(14, 14, dim), std=0.02)
    x = torch.randn(2, dim, 14, 14)
    assert ((block(x, fve) - x).norm() / x.norm()).item() <= 1e-3


def test_bf16_autocast_model_forward() -> None:
    model = _build("rsvheat_test").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.forward_features(x)[-1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_features(x)[-1]
    assert torch.isfinite(out).all()
    assert ((out.float() - reference).norm() / reference.norm()).item() <= 5e-2


@pytest.mark.parametrize("name", TEST_MODELS)
def test_fuse_decay_matches_training_mode(name: str) -> None:
    model = _build(name).eval()
    native, other = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 72, 52)
    with torch.no_grad():
        expected = [model(native), model(other)]
        model.fuse_decay(sizes=[64])
        assert model.is_fused
        assert (model(native) - expected[0]).abs().max().item() <= 1e-5
        assert (model(other) - expected[1]).abs().max().item() <= 1e-5  # lazily frozen while the FVE is present
    keys = set(model.state_dict())
    model.unfuse_decay()
    assert not model.is_fused and set(model.state_dict()) == keys


def test_fused_model_put_back_in_training_keeps_learning_fve_and_to_k() -> None:
    model = _build("vheat_test").eval()
    model.fuse_decay(sizes=[64])
    model.train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for stage in model.stages:
        assert stage.fve.grad is not None and stage.fve.grad.abs().sum() > 0
        assert stage.blocks[0].hco.to_k.weight.grad is not None
    assert model.is_fused  # eval serves the frozen decays again


def test_fuse_decay_with_dropped_fve_runs_listed_sizes_only() -> None:
    model = _build("vheat_test").eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = model(x)
        inference_count = count_parameters(model, "inference")
        model.fuse_decay(sizes=[(64, 80)], drop_fve=True)
        assert (model(x) - expected).abs().max().item() <= 1e-5
        with pytest.raises(DecayNotAvailableError, match="fuse_decay"):
            model(torch.randn(1, 3, 32, 32))
    state = model.state_dict()
    assert not any(key.endswith(".fve") or ".to_k." in key for key in state)
    frozen = sum(h * w * c for (h, w), c in zip(stage_sizes(64, 64), model.dims, strict=True))
    assert count_parameters(model, "train") + frozen == inference_count
    with pytest.raises(DecayNotAvailableError):
        model.unfuse_decay()


def test_state_dict_has_no_caches_and_stable_embedding_keys() -> None:
    model = _build("rsvheat_test").eval()
    keys_before = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 40))
        model.fuse_decay(sizes=[64, (48, 40)])
        model(torch.randn(1, 3, 96, 96))
    keys_after = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert keys_after == keys_before
    assert not any(word in key for key in keys_after for word in ("dct", "decay", "cache", "grid", "k_exp"))
    for i, (h, w) in enumerate(stage_sizes(64, 64)):
        assert keys_after[f"stages.{i}.fve"] == (h, w, 16 * 2**i)
        assert keys_after[f"stages.{i}.sce"] == (h, w, 16 * 2**i)


def test_fixed_k_model_has_no_fve_and_runs_any_size() -> None:
    model = _build("vheat_test", fixed_k=0.3, num_classes=10)
    assert all(stage.fve is None for stage in model.stages)
    assert not any(".to_k." in name for name, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 36, 44)).shape == (1, 10)


def test_drop_path_is_linear_over_blocks() -> None:
    model = _meta_model("vheat_tiny", drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    steps = [b - a for a, b in zip(rates, rates[1:], strict=False)]
    assert all(math.isclose(step, 0.2 / 11) for step in steps)


def test_zero_pad_loader_keeps_the_learned_block_and_bicubic_matches_runtime_resizing() -> None:
    model = _build("rsvheat_test", img_size=224).eval()
    state = model.state_dict()
    padded = resize_embeddings(state, 512, mode="zero_pad")
    for i, (old, new) in enumerate(zip((56, 28, 14, 7), (128, 64, 32, 16), strict=True)):
        for name in ("fve", "sce"):
            key = f"stages.{i}.{name}"
            assert state[key].shape[:2] == (old, old) and padded[key].shape[:2] == (new, new)
            assert torch.equal(padded[key][:old, :old], state[key])
            assert padded[key][old:].abs().sum() == 0 and padded[key][:, old:].abs().sum() == 0
    rebuilt = rsvheat.create_model("rsvheat_test", img_size=512)
    rebuilt.load_state_dict(padded)
    resized = resize_embeddings(state, (96, 64))
    for i, size in enumerate(stage_sizes(96, 64)):
        with torch.no_grad():
            assert torch.equal(resized[f"stages.{i}.fve"], model.stages[i].embedding("fve", *size))
    assert torch.equal(resized["stems.optical.conv1.weight"], state["stems.optical.conv1.weight"])
    with pytest.raises(ValueError, match="zero-pad"):
        resize_embeddings(state, 64, mode="zero_pad")


@pytest.mark.parametrize("channels_last", [False, True])
def test_mlp_linear_path_matches_the_conv_definition(channels_last: bool) -> None:
    torch.manual_seed(0)
    mlp = Mlp2d(8, 4.0)
    x = torch.randn(2, 8, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(F.gelu(F.conv2d(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    assert mlp.fc1.weight.shape == (32, 8, 1, 1)  # conv-shaped parameters: checkpoints keep loading
    assert (mlp(x) - expected).abs().max().item() <= 1e-5


def test_trunk_runs_channels_last() -> None:
    model = _build("vheat_test").eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, 64, 64))
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in maps)

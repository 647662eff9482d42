import json

import pytest
import torch

import rsvheat
from rsvheat.errors import BandCountMismatchError
from rsvheat.layers.spectral_mixer import SpectralFilter, SpectralSizeError
from rsvheat.models.heracles import Attention
from rsvheat.models.heracles_ts import HeraclesChipSequence, HeraclesTS, fill_masked_dates


def _series(batch=3, steps=12, bands=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, bands, generator=gen)
    mask = torch.rand(batch, steps, generator=gen) > 0.3
    mask[:, 0] = True
    doy = torch.linspace(5, 360, steps).expand(batch, steps).clone()
    return x, mask, doy


def test_heracles_ts_shapes_and_embedding_width():
    model = rsvheat.create_model("heracles_ts", num_classes=9).eval()
    assert model.embed.in_features == 10 + 1  # bands + validity channel
    x, mask, doy = _series(batch=2, steps=36, bands=10)
    with torch.no_grad():
        out = model(x, mask, doy)
    assert out.shape == (2, 9) and torch.isfinite(out).all()
    assert model.blocks[0].mixer.global_filter.weight.shape == (64, 36)
    assert isinstance(model.blocks[-1].mixer, Attention)


@pytest.mark.parametrize("transform", ["dct", "dht"])
def test_1d_filter_with_unit_weight_is_identity(transform):
    filt = SpectralFilter(5, (36,), transform)
    with torch.no_grad():
        filt.weight.fill_(1.0)
    x = torch.randn(2, 5, 36)
    assert (filt(x) - x).abs().max() <= 1e-5


def test_mismatched_length_raises_under_strict_and_interpolate_runs():
    model = rsvheat.create_model("heracles_ts_test").eval()
    assert model.blocks[0].mixer.global_filter.size_policy == "strict"
    with pytest.raises(SpectralSizeError, match="built for a 12 grid but the input grid is 10"):
        model(torch.randn(2, 10, 4))
    loose = rsvheat.create_model("heracles_ts_test", spectral_size_policy="interpolate", transform="dht").eval()
    with torch.no_grad():
        assert loose(torch.randn(2, 10, 4)).shape == (2, 32)


def test_masked_dates_are_never_read():
    torch.manual_seed(0)
    x, mask, doy = _series()
    for fill in (True, False):
        model = rsvheat.create_model("heracles_ts_test", num_classes=3, fill_masked=fill).eval()
        corrupted = x.clone()
        corrupted[~mask] = float("nan")
        with torch.no_grad():
            assert torch.allclose(model(x, mask, doy), model(corrupted, mask, doy), atol=1e-6)


def test_masked_attention_keys_and_pooling():
    attn = Attention(8, 2)
    x = torch.randn(2, 6, 8)
    key_mask = torch.tensor([[True, True, False, True, False, True]] * 2)
    changed = x.clone()
    changed[:, ~key_mask[0]] += 5.0
    out, out_changed = attn(x, key_mask=key_mask), attn(x, context=changed, key_mask=key_mask)
    assert torch.allclose(out, out_changed, atol=1e-6)
    model = rsvheat.create_model("heracles_ts_test").eval()
    tokens = torch.randn(2, 12, 32)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :3] = True
    assert torch.allclose(model.forward_head(tokens, mask), tokens[:, :3].mean(dim=1), atol=1e-6)


def test_all_masked_series_stays_finite():
    model = rsvheat.create_model("heracles_ts_test", num_classes=2).eval()
    x, mask, _ = _series(batch=2)
    mask[1] = False
    with torch.no_grad():
        assert torch.isfinite(model(x, mask)).all()


def test_fill_masked_dates_interpolates_linearly():
    x = torch.tensor([[0.0, 99.0, 99.0, 3.0, 99.0, 99.0]])[..., None]
    valid = torch.tensor([[False, True, False, True, False, False]])
    x[0, 1, 0] = 1.0
    filled = fill_masked_dates(x, valid)[0, :, 0]
    assert torch.allclose(filled, torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0]))
    assert torch.equal(fill_masked_dates(x, torch.zeros_like(valid)), torch.zeros_like(x))


def test_day_of_year_changes_the_output_and_is_checked():
    model = rsvheat.create_model("heracles_ts_test").eval()
    x, mask, doy = _series()
    with torch.no_grad():
        assert not torch.allclose(model(x, mask, doy), model(x, mask, doy + 100.0))
    with pytest.raises(ValueError, match="doy must have shape"):
        model(x, mask, doy[:, :5])
    with pytest.raises(BandCountMismatchError, match="expects 4 bands but the input has 5"):
        model(torch.randn(3, 12, 5), mask)


def test_ts_backward_and_grad_checkpointing_match():
    torch.manual_seed(0)
    model = rsvheat.create_model("heracles_ts_test", num_classes=2)
    x, mask, doy = _series()
    out = model(x, mask, doy)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads["blocks.0.mixer.global_filter.weight"].abs().sum() > 0
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x, mask, doy)
    out2.sum().backward()
    assert torch.allclose(out, out2, atol=1e-6)
    assert all(torch.allclose(p.grad, grads[n], atol=1e-6) for n, p in model.named_parameters())


@pytest.fixture(scope="module")
def chipseq():
    torch.manual_seed(0)
    return rsvheat.create_model("heracles_chipseq_test", num_classes=3).eval()


def test_chip_sequence_is_invariant_to_batch_permutation(chipseq):
    x = torch.randn(4, 6, 4, 32, 32)
    mask = torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = chipseq(x, mask)
        out_perm = chipseq(x[perm], mask[perm])
    assert out.shape == (4, 3)
    assert torch.allclose(out[perm], out_perm, atol=1e-5)


def test_chip_sequence_skips_masked_dates(chipseq):
    x = torch.randn(2, 6, 4, 32, 32)
    mask = torch.tensor([[True, False, True, True, False, True], [False] * 6])
    corrupted = x.clone()
    corrupted[~mask] = float("nan")
    with torch.no_grad():
        out = chipseq(x, mask)
        assert torch.allclose(out, chipseq(corrupted, mask), atol=1e-6)
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        chipseq(x[0])


def test_chip_sequence_with_another_encoder_and_json_kwargs():
    model = rsvheat.create_model(
        "heracles_chipseq_test", encoder="vheat_test", in_chans={"optical": 4, "sar": 2}, num_classes=2
    )
    json.dumps(model.model_kwargs)
    x = torch.randn(2, 6, 2, 32, 32)
    out = model(x, modality="sar")
    out.sum().backward()
    assert out.shape == (2, 2)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_chip_sequence_rejects_non_backbone_encoder():
    with pytest.raises(TypeError, match="backbone interface"):
        HeraclesChipSequence(encoder="heracles_ts_test", in_chans=4)


def test_ts_constructor_checks():
    with pytest.raises(ValueError, match="2 entries"):
        HeraclesTS(depths=(1, 1, 1))

import math

import pytest
import torch

from rsvheat.layers.dht import dht, dht1d, dht2d


def _cas_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    theta = 2 * math.pi * k[:, None] * k[None, :] / n
    return torch.cos(theta) + torch.sin(theta)


def _explicit_dht2(x: torch.Tensor) -> torch.Tensor:
    """Σ_{m,n} x[m, n] cas(2π(um/H + vn/W)) / √(HW), evaluated term by term in float64."""
    height, width = x.shape[-2:]
    u = torch.arange(height, dtype=torch.float64)
    v = torch.arange(width, dtype=torch.float64)
    # theta[u, v, m, n] = 2π (u m / H + v n / W)
    theta = 2 * math.pi * (
        (u[:, None, None, None] * u[None, None, :, None]) / height
        + (v[None, :, None, None] * v[None, None, None, :]) / width
    )
    kernel = torch.cos(theta) + torch.sin(theta)  # (H, W, H, W)
    return torch.einsum("uvmn,...mn->...uv", kernel, x.double()) / math.sqrt(height * width)


def test_dht2_matches_explicit_cas_sum_on_16x12():
    x = torch.randn(2, 3, 16, 12)
    expected = _explicit_dht2(x)
    assert torch.allclose(dht2d(x).double(), expected, atol=1e-5)


def test_dht1_matches_cas_matrix():
    x = torch.randn(4, 7, 36)
    expected = x.double() @ _cas_matrix(36).T / math.sqrt(36)
    assert torch.allclose(dht1d(x).double(), expected, atol=1e-5)
    # along a non-last axis
    assert torch.allclose(dht1d(x.transpose(1, 2), dim=1), dht1d(x).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 16, 12), (1, 3, 7, 9), (2, 8, 56, 56)])
def test_dht2_is_an_involution(shape):
    x = torch.randn(shape)
    assert (dht2d(dht2d(x)) - x).abs().max() <= 1e-5


def test_dht1_is_an_involution_and_orthonormal():
    x = torch.randn(5, 36)
    y = dht1d(x)
    assert (dht1d(y) - x).abs().max() <= 1e-5
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)  # Parseval


def test_dht_joint_2d_is_not_the_separable_product():
    # The 2-D cas kernel is cas(a + b), not cas(a)·cas(b): the joint transform differs from two 1-D ones.
    x = torch.randn(1, 1, 8, 6)
    separable = dht1d(dht1d(x, dim=-1), dim=-2)
    assert not torch.allclose(dht2d(x), separable, atol=1e-3)


def test_dht_dtypes():
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    assert dht(x, (-2, -1)).dtype == torch.float64
    assert dht(x.bfloat16(), (-2, -1)).dtype == torch.float32
    with pytest.raises(TypeError, match="real tensor"):
        dht(torch.randn(4, 4, dtype=torch.complex64), (-1,))

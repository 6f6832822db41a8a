import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from convae.network.layers import LAYERS, ConvDown, ConvUp, PoolDown, PoolUp, ResizeConvUp, nearest_unpool
from convae.network.spec import Conv, Pool

torch.manual_seed(0)


def test_factory_keyed_by_kind_and_dims():
    assert LAYERS["conv", 3] is torch.nn.Conv3d
    assert LAYERS["bn", 0] is torch.nn.BatchNorm1d
    with pytest.raises(KeyError, match="no entry for kind 'conv' with 4"):
        LAYERS["conv", 4]


@given(
    dims=st.integers(1, 3),
    n=st.integers(1, 12),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    padding=st.sampled_from(["same", "valid", 0, 1, 2]),
    data=st.data(),
)
def test_tied_transposed_conv_is_exact_adjoint(dims, n, k, s, padding, data):
    """<conv(x), y> == <x, conv_T(y)> for the tied transposed convolution (biases off)."""
    spec = Conv(3, k, stride=s, padding=padding, bias=False)
    sizes = [
        data.draw(st.integers(max(1, k - 2 * (padding if isinstance(padding, int) else 0)), n + k)) for _ in range(dims)
    ]
    if padding == "valid":
        sizes = [max(x, k) for x in sizes]
    down = ConvDown(spec, 2, dims).double()
    up = ConvUp(down, tied=True).double()
    x = torch.randn(2, 2, *sizes, dtype=torch.float64)
    y_shape, _ = down(x)
    y = torch.randn_like(y_shape)
    xt = up(y, [2, *sizes])
    assert xt.shape == x.shape
    lhs = (down(x)[0] * y).sum()
    rhs = (x * xt).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@given(dims=st.integers(1, 3), k=st.integers(1, 4), n=st.integers(1, 9))
def test_tied_resize_conv_is_adjoint_at_stride_one(dims, k, n):
    spec = Conv(3, k, bias=False)
    down = ConvDown(spec, 2, dims).double()
    up = ResizeConvUp(down, tied=True).double()
    x = torch.randn(1, 2, *[n] * dims, dtype=torch.float64)
    y = torch.randn_like(down(x)[0])
    assert torch.allclose((down(x)[0] * y).sum(), (x * up(y, [2, *[n] * dims])).sum())


@given(dims=st.integers(1, 3), k=st.integers(1, 4), extra=st.integers(0, 2), data=st.data())
def test_avg_unpool_is_right_inverse_of_avg_pool(dims, k, extra, data):
    """avgpool(unpool(y)) == y for any y, odd sizes and partial windows included."""
    s = k + extra
    sizes = [data.draw(st.integers(k, 11)) for _ in range(dims)]
    down = PoolDown(Pool("avg", k, s), dims)
    x = torch.randn(2, 3, *sizes, dtype=torch.float64)
    y = torch.randn_like(down(x)[0])  # any y of the pooled shape
    restored = PoolUp(down)(y, [3, *sizes])
    assert restored.shape == x.shape
    assert torch.allclose(down(restored)[0], y)


def test_avg_unpool_is_nearest_neighbour_on_9():
    y = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert nearest_unpool(y, 2, 2, [9]).flatten().tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert nearest_unpool(y[..., :3], 1, 3, [7]).flatten().tolist() == [1, 0, 0, 2, 0, 0, 3]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("n", [4, 9])
def test_max_unpool_puts_values_at_argmax_and_zeros_elsewhere(dims, n):
    down = PoolDown(Pool("max", 2, 2), dims)
    x = torch.randn(2, 3, *[n] * dims)
    y, switches = down(x)
    restored = PoolUp(down)(y, [3, *[n] * dims], switches)
    assert restored.shape == x.shape
    nonzero = restored != 0
    # Every pooled maximum is back where it was found, nothing else is set.
    assert torch.equal(restored[nonzero], x[nonzero])
    assert int(nonzero.sum()) == y.numel()
    assert torch.equal(torch.sort(restored[nonzero]).values, torch.sort(y.flatten()).values)


def test_decode_without_switches_copies_max_to_window():
    down = PoolDown(Pool("max", 2, 2), 2)
    y = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = PoolUp(down)(y, [1, 3, 3], None)
    assert out[0, 0].tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]

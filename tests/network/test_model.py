import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import convae
from convae.errors import ConvaeError
from convae.network.spec import infer_shapes, parse, to_blocks

EXAMPLE = "conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu dense(32)"


def test_issue_example_28x28():
    model = convae.build(EXAMPLE, input_shape=(1, 28, 28))
    x = torch.rand(5, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (5, 32)
    assert model.decode(z).shape == (5, 1, 28, 28)
    assert model(x).shape == x.shape
    out = model(x)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output by default


def test_worked_example_9x9_restored_exactly():
    model = convae.build("conv(4,3,stride=2)", input_shape=(1, 9, 9))
    assert model.code_shape == (4, 5, 5)
    x = torch.rand(2, 1, 9, 9)
    assert model.encode(x).shape == (2, 4, 5, 5)
    assert model(x).shape == (2, 1, 9, 9)
    # The decoder is a transposed conv with the encoder's kernel and stride,
    # whose output size comes from the layer arithmetic, not a crop.
    up = model.decoder[0].up
    assert (up.kernel, up.stride) == (3, 2)


_post = st.lists(st.sampled_from(["bn", "relu", "gelu", "tanh", "leakyrelu(0.1)", "dropout(0.1)"]), max_size=2)
_conv = st.builds(
    lambda c, k, s, p, post: [f"conv({c},{k},stride={s},padding={p})", *post],
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 3),
    st.sampled_from(["same", "same", "valid", "1"]),
    _post,
)
_pool = st.builds(
    lambda mode, k, extra, post: [f"{mode}pool({k},stride={k + extra})", *post],
    st.sampled_from(["max", "avg"]),
    st.integers(1, 3),
    st.integers(0, 1),
    _post,
)
_res = st.builds(lambda k, post: [f"res({k})", *post], st.sampled_from([1, 3, 5]), _post)
_dense = st.builds(lambda n, post: [f"dense({n})", *post], st.integers(1, 6), _post)


@st.composite
def specs(draw):
    dims = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 64)) for _ in range(dims)]
    if dims == 3:  # every axis may reach 64, but not all three at once (keeps each example fast)
        sizes = draw(st.permutations([sizes[0], draw(st.integers(1, 16)), draw(st.integers(1, 16))]))
    shape = (draw(st.integers(1, 3)), *sizes)
    blocks = draw(st.lists(st.one_of(_conv, _pool), min_size=1, max_size=4))
    blocks = draw(st.permutations(blocks + draw(st.lists(_res, max_size=1))))
    blocks += draw(st.lists(_dense, max_size=2))
    layers = [layer for block in blocks for layer in block]
    try:
        infer_shapes(to_blocks(parse(layers)), shape)
    except ConvaeError:
        assume(False)
    tied = draw(st.booleans()) and not any(layer.startswith("res") for layer in layers)  # res has no tied form
    return " ".join(layers), shape, tied, draw(st.sampled_from(["transpose", "resize"]))


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(specs())
def test_every_shape_comes_back(case):
    arch, shape, tied, upsample = case
    model = convae.build(arch, shape, tied=tied, upsample=upsample)
    x = torch.rand(2, *shape)
    assert model(x).shape == x.shape
    z = model.encode(x)
    assert model.decode(z).shape == x.shape
    # The code shape printed by summary() is the real one.
    printed = re.search(r"code shape: \(([\d, ]+)\)", model.summary()).group(1)
    assert tuple(int(v) for v in printed.split(",") if v.strip()) == tuple(z.shape[1:])
    model.eval()
    assert model(x).shape == x.shape


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_no_dense_spec_restores_other_sizes(dims):
    model = convae.build("conv(4,3,stride=2) relu maxpool(2) conv(4,4,stride=3)", (2, *[16] * dims))
    for n in (5, 7, 10, 13):
        x = torch.rand(1, 2, *[n + i for i in range(dims)])
        assert model(x).shape == x.shape
    with pytest.raises(ConvaeError, match="too small"):
        model(torch.rand(1, 2, *[1] * dims))


def test_decode_alone_other_size_needs_output_shape():
    model = convae.build("conv(4,3,stride=2)", (1, 9, 9))
    z = torch.rand(1, 4, 6, 6)
    with pytest.raises(ConvaeError, match="pass output_shape"):
        model.decode(z)
    assert model.decode(z, output_shape=(1, 11, 12)).shape == (1, 1, 11, 12)


def test_decode_alone_with_maxpool_uses_nearest_neighbour():
    model = convae.build("maxpool(2)", (1, 3, 3), output="identity")
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert model.decode(z)[0, 0].tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]
    # With switches (a forward pass) the maximum goes back to where it was.
    x = torch.tensor([[[[0.0, 5.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 7.0]]]])
    assert model(x)[0, 0].tolist() == [[0, 5, 1], [0, 0, 0], [2, 0, 7]]


def test_forward_with_code_can_decode_the_first_samples_alone():
    torch.manual_seed(0)
    model = convae.build("conv(4,3) bn relu maxpool(2) dense(5)", (1, 8, 8)).eval()
    x = torch.rand(6, 1, 8, 8)
    out, z = model.forward_with_code(x, decoded=2)
    assert z.shape == (6, 5) and torch.allclose(z, model.encode(x))  # every sample's code
    # the first two reconstructed, each through its own max-pooling switches
    assert out.shape == (2, 1, 8, 8) and torch.allclose(out, model(x[:2]))


def test_wrong_input_shape_is_clear():
    model = convae.build(EXAMPLE, (1, 28, 28))
    with pytest.raises(ConvaeError, match=r"expected input of shape \(N, 1, 28, 28\), got \(2, 1, 27, 28\)"):
        model(torch.rand(2, 1, 27, 28))
    with pytest.raises(ConvaeError, match=r"got \(2, 3, 28, 28\)"):
        model.encode(torch.rand(2, 3, 28, 28))
    with pytest.raises(ConvaeError, match=r"expected codes of shape \(N, 32\)"):
        model.decode(torch.rand(2, 31))


def test_bad_build_arguments():
    with pytest.raises(ConvaeError, match="output must be one of"):
        convae.build("dense(3)", (1, 4), output="softmax")
    with pytest.raises(ConvaeError, match="upsample must be one of"):
        convae.build("dense(3)", (1, 4), upsample="pixelshuffle")
    with pytest.raises(ConvaeError, match=r"layer 3 'conv\(8,5,padding=valid\)'.*input size 2"):
        convae.build("conv(8,3,stride=2) relu conv(8,5,padding=valid)", (1, 4, 4))


def test_mirror_structure():
    model = convae.build("conv(8,3,stride=2) bn relu maxpool(2) conv(16,3) gelu dense(10) tanh", (3, 12, 12))
    blocks = model.decoder
    # Reverse order: dense, conv, maxpool, conv; each ends with what the encoder
    # applied at the shape it restores, the last with the output activation.
    assert [type(b.up).__name__ for b in blocks] == ["DenseUp", "ConvUp", "PoolUp", "ConvUp"]
    assert [type(m).__name__ for m in blocks[0].post] == ["GELU"]
    assert [type(m).__name__ for m in blocks[1].post] == []
    assert [type(m).__name__ for m in blocks[2].post] == ["BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in blocks[3].post] == ["Sigmoid"]
    assert blocks[2].post[0].num_features == 8


def test_tied_shares_encoder_weights():
    model = convae.build("conv(8,3,stride=2) relu dense(5)", (1, 7, 7), tied=True)
    untied = convae.build("conv(8,3,stride=2) relu dense(5)", (1, 7, 7))
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    assert decoder_params == 1 + 8 * 4 * 4  # biases only
    assert sum(p.numel() for p in untied.parameters()) > encoder_params + decoder_params
    # A change to the encoder weight changes the decoder's output.
    x = torch.rand(1, 1, 7, 7)
    before = model(x)
    with torch.no_grad():
        model.encoder[0].down.conv.weight.mul_(2)
    assert not torch.allclose(before, model(x))


def test_batch_norm_running_stats_update_in_train_and_are_used_in_eval():
    torch.manual_seed(0)
    model = convae.build("conv(4,3) bn relu", (1, 6, 6), output="identity")
    bn = model.encoder[0].post[0]
    conv = model.encoder[0].down.conv
    # Data far from zero mean / unit variance, so running and batch stats differ clearly.
    data = torch.randn(64, 1, 6, 6) * 3 + 5
    model.train()
    for batch in data.split(16):
        model(batch)
    assert bn.num_batches_tracked.item() == 4
    assert not torch.allclose(bn.running_mean, torch.zeros(4))  # updated in train()
    assert not torch.allclose(bn.running_var, torch.ones(4))

    model.eval()
    x = torch.randn(8, 1, 6, 6) * 3 + 5
    with torch.no_grad():
        pre = conv(x)
        expected_eval = (pre - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            bn.running_var.view(1, -1, 1, 1) + bn.eps
        )
        expected_eval = torch.relu(expected_eval * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
        batch_mean = pre.mean(dim=(0, 2, 3), keepdim=True)
        batch_var = pre.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        with_batch_stats = torch.relu((pre - batch_mean) / torch.sqrt(batch_var + bn.eps))
        code = model.encode(x)
    assert torch.allclose(code, expected_eval, atol=1e-5)  # eval uses the running statistics
    assert not torch.allclose(code, with_batch_stats, atol=1e-2)  # ... not the batch's
    # eval does not move the running statistics
    mean_before = bn.running_mean.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(bn.running_mean, mean_before)


def test_summary_lists_encoder_and_decoder():
    text = convae.build(EXAMPLE, (1, 28, 28)).summary()
    assert "conv(32,3,stride=2) bn relu" in text
    assert "convT(1,3,stride=2) sigmoid" in text
    assert "dense(3136) unflatten bn relu" in text
    assert "code shape: (32,)" in text
    assert re.search(r"parameters: [\d,]+", text)


def test_gradients_flow_to_every_parameter():
    model = convae.build("conv(4,3,stride=2) bn relu maxpool(2) dense(6)", (1, 9, 9), tied=True)
    model(torch.rand(3, 1, 9, 9)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_res_block_keeps_shape_starts_as_identity_and_mirrors(dims):
    model = convae.build("conv(4,3,stride=2) bn relu res(3) relu res(5,act=gelu)", (2, *[7] * dims))
    x = torch.rand(3, 2, *[7] * dims)
    assert model(x).shape == x.shape
    down = model.encoder[2].down
    y = torch.randn(3, 4, *[4] * dims)
    # The last batch norm starts at zero scale: a new block passes its input through.
    assert torch.equal(down(y)[0], y)
    # The mirror is a residual block of its own, not the encoder's.
    up = model.decoder[0].up
    assert up.block.spec == down.spec and up.block is not down
    assert all(a is not b for a, b in zip(up.parameters(), down.parameters()))
    # Once trained away from zero, it is no longer the identity, and gradients reach both convolutions.
    nn.init.ones_(down.body[-1].weight)
    down(y)[0].sum().backward()
    assert not torch.equal(down(y)[0], y)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in down.body[0].parameters())


def test_res_block_errors():
    with pytest.raises(ConvaeError, match="tied weights are not defined for res"):
        convae.build("conv(4,3) res(3)", (1, 8, 8), tied=True)
    with pytest.raises(ConvaeError, match="needs spatial input"):
        convae.build("dense(4) res(3)", (1, 8, 8))


# ----------------------------------------------------------------------------- skip connections (U-Nets)
UNET = "conv(4,3) relu skip conv(8,3,stride=2) relu skip(add) maxpool(2) conv(8,3,stride=2) relu"


@pytest.mark.parametrize("size", [(13,), (13, 11), (9, 7, 5)])
def test_a_unet_restores_odd_sizes_in_every_dimension(size):
    model = convae.build(UNET, (2, *size))
    x = torch.rand(3, 2, *size)
    assert model(x).shape == x.shape
    other = tuple(s + 4 for s in size)  # fully convolutional: other sizes too
    assert model(torch.rand(1, 2, *other)).shape == (1, 2, *other)


def test_the_decoder_joins_each_skip_where_its_blocks_mirror_begins():
    model = convae.build("conv(4,3) relu skip(add) conv(4,3,stride=2) relu skip conv(8,3,stride=2)", (1, 9, 7))
    model.eval()
    x = torch.rand(2, 1, 9, 7)
    e1, _ = model.encoder[0](x)
    e2, _ = model.encoder[1](e1)
    z, _ = model.encoder[2](e2)
    d = model.decoder[0](z, list(e2.shape[1:]), None)  # the mirror of block 3 restores block 2's output
    d = model.joins["1"].merge(torch.cat([d, e2], 1))  # cat: concatenated, merged by a 1x1 convolution
    d = model.decoder[1](d, list(e1.shape[1:]), None)
    d = d + e1  # add
    d = model.decoder[2](d, list(x.shape[1:]), None)
    assert torch.allclose(model(x), d, atol=1e-6)
    text = model.summary()
    assert "join skip(cat) convT(4,3,stride=2)" in text and "join skip(add) convT(1,3)" in text


def test_skips_refused_where_they_cannot_line_up_and_decode_alone_needs_the_encoder():
    with pytest.raises(ConvaeError, match=r"layer 2 'skip': cannot line up across the dense layer at layer 4"):
        convae.build("conv(4,3) skip conv(4,3,stride=2) dense(6)", (1, 9, 9))
    with pytest.raises(ConvaeError, match="last block's output is the code"):
        convae.build("conv(4,3) conv(4,3) skip", (1, 9, 9))
    with pytest.raises(ConvaeError, match="skip must end its block"):
        convae.build("conv(4,3) skip relu conv(4,3)", (1, 9, 9))
    with pytest.raises(ConvaeError, match="mode='both' is not one of cat, add"):
        convae.build("conv(4,3) skip(both) conv(4,3)", (1, 9, 9))
    model = convae.build(UNET, (2, 9, 9))
    with pytest.raises(ConvaeError, match="skip connections"):
        model.decode(model.encode(torch.rand(1, 2, 9, 9)))


def test_a_model_without_skips_keeps_its_state_dict_keys():
    keys = set(convae.build("conv(4,3,stride=2) bn relu dense(6)", (1, 9, 9)).state_dict())
    assert not any(k.startswith("joins") for k in keys)
    assert convae.canonical("conv(4,3) relu skip(cat) conv(4,3)") == "conv(4,3) relu skip conv(4,3)"
    assert convae.canonical("conv(4,3) skip(add) conv(4,3)") == "conv(4,3) skip(add) conv(4,3)"

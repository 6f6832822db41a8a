import pytest
from hypothesis import given
from hypothesis import strategies as st

from convae.errors import ConvaeError
from convae.network.spec import Act, Conv, Dense, Dropout, Norm, Pool, canonical, infer_shapes, parse, to_blocks


def test_parse_example():
    layers = parse("conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu dense(32)")
    assert layers[0] == Conv(32, 3, stride=2)
    assert isinstance(layers[1], Norm) and layers[2] == Act("relu")
    assert layers[-1] == Dense(32)
    assert [x.position for x in layers] == list(range(1, 8))


def test_defaults_and_keywords():
    conv, pool, apool, leaky, drop = parse("conv(8,5) maxpool(3) avgpool(2,stride=3) leakyrelu(0.2) dropout(0.1)")
    assert (conv.stride, conv.padding, conv.bias) == (1, "same", True)
    assert (pool.kernel, pool.stride) == (3, 3)
    assert apool.stride == 3
    assert leaky.slope == pytest.approx(0.2)
    assert drop == Dropout(0.1)
    assert parse("conv(8,3,padding=valid,bias=FALSE)")[0] == Conv(8, 3, padding="valid", bias=False)
    assert parse("conv(8,3,padding=2)")[0].padding == 2
    assert parse("leakyrelu(a=0.3)")[0].slope == pytest.approx(0.3)


def test_list_form_matches_string():
    text = "conv(16,3,stride=2) bn relu maxpool(2) dense(10)"
    as_strings = parse(text.split())
    as_dicts = parse(
        [
            {"type": "conv", "channels": 16, "kernel": 3, "stride": 2},
            {"type": "bn"},
            {"type": "relu"},
            {"type": "maxpool", "kernel": 2},
            {"type": "dense", "features": 10},
        ]
    )
    assert parse(text) == as_strings == as_dicts


@pytest.mark.parametrize(
    "arch, fragment",
    [
        ("conv(8,3) bogus", "layer 2 'bogus': unknown layer 'bogus'"),
        ("conv(8)", "layer 1 'conv(8)': missing argument 'kernel'"),
        ("conv(8,3,stride=0)", "layer 1 'conv(8,3,stride=0)': stride='0' is not a positive integer"),
        ("conv(8,3,stride=x)", "stride='x' is not a positive integer"),
        ("conv(8,3,padding=full)", "padding='full' is not 'same', 'valid' or an integer"),
        ("conv(8,3,bias=maybe)", "bias='maybe' is not true or false"),
        ("conv(8,3,color=red)", "unknown argument 'color'"),
        ("relu conv(8,3)", "layer 1 'relu': a spec must start with"),
        ("dense(4) dropout(1.5)", "layer 2 'dropout(1.5)': p='1.5' is not a probability"),
        ("conv(8,3,2,1)", "takes at most 2 positional"),
        ("conv(8,3) (", "layer 2 '(': cannot parse"),
        ("avgpool(3,stride=2)", "avgpool needs stride >= kernel"),
        ("conv(4,3) res(2)", "layer 2 'res(2)': res needs an odd kernel, not 2"),
        ("conv(4,3) res(3,act=swish)", "act='swish' is not an activation"),
        ("", "architecture is empty"),
    ],
)
def test_errors_name_token_and_position(arch, fragment):
    with pytest.raises(ValueError, match=None) as info:
        to_blocks(parse(arch))
    assert fragment in str(info.value)


def test_shape_errors_name_layer_and_size():
    blocks = to_blocks(parse("conv(4,3,padding=valid) conv(4,5,padding=valid)"))
    with pytest.raises(ConvaeError) as info:
        infer_shapes(blocks, (1, 6, 6))
    message = str(info.value)
    assert "layer 2 'conv(4,5,padding=valid)'" in message and "input size 4" in message
    with pytest.raises(ConvaeError, match="needs spatial input"):
        infer_shapes(to_blocks(parse("dense(4) conv(2,3)")), (1, 8))
    with pytest.raises(ConvaeError, match="1 to 3 spatial"):
        infer_shapes(to_blocks(parse("dense(4)")), (1, 2, 2, 2, 2))


def test_worked_example_9x9():
    assert infer_shapes(to_blocks(parse("conv(4,3,stride=2)")), (1, 9, 9))[-1] == (4, 5, 5)
    assert infer_shapes(to_blocks(parse("maxpool(2)")), (1, 9, 9))[-1] == (1, 5, 5)


@given(n=st.integers(1, 200), k=st.integers(1, 7), s=st.integers(1, 4))
def test_same_padding_gives_ceil(n, k, s):
    assert Conv(1, k, stride=s).out_size(n) == -(-n // s)


@given(
    st.lists(
        st.sampled_from(
            [
                "conv(3,2,stride=2,padding=valid)",
                "maxpool(3,stride=2)",
                "leakyrelu(0.5)",
                "dense(7,bias=false)",
                "bn",
                "res(5,act=GELU)",
                "res",
            ]
        ),
        min_size=1,
        max_size=6,
    )
)
def test_canonical_round_trip(tokens):
    text = " ".join(tokens)
    assert parse(canonical(text)) == parse(text)


def test_pool_ceil_mode_matches_torch():
    import torch
    import torch.nn.functional as F

    for n in range(1, 20):
        for k in range(1, 5):
            for s in range(1, 5):
                if n < k:  # refused, in every dimension: a size below 1 is reported
                    assert Pool("max", k, s).out_size(n) < 1
                    continue
                expected = F.max_pool1d(torch.zeros(1, 1, n), k, s, ceil_mode=True).shape[-1]
                assert Pool("max", k, s).out_size(n) == expected, (n, k, s)

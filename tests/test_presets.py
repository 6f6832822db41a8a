import pytest
import torch

from convae import presets
from convae.config import arch_of, resolve_config
from convae.errors import ConvaeError
from convae.network.model import build


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_and_resolves(name):
    config = resolve_config({"arch": name})
    model = build(arch_of(config), (1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == x.shape
    for key, value in presets.get(name).train.items():
        assert getattr(config, key) == value


def test_registry():
    assert presets.DEFAULT_PRESET in presets.names()
    with pytest.raises(ConvaeError, match="unknown preset 'nope'"):
        presets.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        presets.register(presets.get("fmnist-32"))
    with pytest.raises(ConvaeError, match="unknown preset 'fmnist-99'"):
        arch_of(resolve_config({"arch": "fmnist-99"}))

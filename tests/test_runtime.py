"""Where and how steps run: speed settings, compilation, devices, bf16."""

import json
import math

import pytest
import torch
from helpers import small_config

from convae.config import resolve_config
from convae.errors import ConvaeError
from convae.runtime import Speed
from convae.training.train import prepare, train
from convae.training.trainer import Trainer

_config = small_config


def test_speed_settings_are_recorded_for_resume(npz, tmp_path):
    from convae.runtime import fits_on_device

    train(_config(npz, tmp_path, epochs=1, amp=False, channels_last=False))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["amp"] is False and saved["channels_last"] is False
    train(_config(npz, tmp_path, "auto", epochs=1))
    auto = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert auto["channels_last"] is True and isinstance(auto["amp"], bool)  # decided, then written down
    assert auto["compile"] is False  # compiling is slower on CPUs
    assert fits_on_device(10**12, torch.device("cpu"))


def test_speed_defaults_on_a_gpu(monkeypatch):
    from convae.runtime import speed_settings

    # What the trainer would choose on a CUDA device, decided without one.
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: True)
    assert speed_settings(None, None, None, cuda, 1, images=True) == Speed(True, True, "reduce-overhead")
    assert speed_settings(None, None, None, cuda, 1, images=False) == Speed(False, True, "reduce-overhead")
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: False)  # pre-Volta, or no Triton
    assert speed_settings(None, None, None, cuda, 1, images=True) == Speed(True, True, False)
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: True)
    # under DDP: not measured, so not compiled
    assert speed_settings(None, None, None, cuda, 2, images=True) == Speed(True, True, False)
    # the user's choice wins
    assert speed_settings(None, False, "max-autotune", cuda, 2, images=True) == Speed(True, False, "max-autotune")


def test_a_capped_instruction_set_has_no_native_bf16(monkeypatch):
    """Kernels capped below AVX512-BF16 (as the benchmarks run an AVX2 machine's) would emulate bf16:
    autocast stays off there, whatever the CPU itself has."""
    from convae import runtime

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert runtime.cpu_has_native_bf16()
    cpu = torch.device("cpu")
    assert runtime.speed_settings(None, None, None, cpu, 1, images=True) == Speed(True, True, False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not runtime.cpu_has_native_bf16()
    assert runtime.speed_settings(None, None, None, cpu, 1, images=True) == Speed(True, False, False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert runtime.cpu_has_native_bf16()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not runtime.cpu_has_native_bf16()


def _compile_with(monkeypatch, backend):
    """torch.compile through Dynamo with another backend: the trainer's path, without inductor's cost."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: compile_(net, backend=backend))


def _no_c_compiler(graph, example_inputs):
    raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")


def _counting_compiles(monkeypatch):
    """The graphs Dynamo hands its backend, run as they are."""
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    _compile_with(monkeypatch, counting)
    return graphs


@pytest.mark.parametrize("extra", [{}, {"contrastive": 0.5, "contrastive_head": 4}])
def test_compile_is_tried_on_one_batch_and_leaves_the_model_as_it_was(npz, tmp_path, monkeypatch, extra):
    graphs = _counting_compiles(monkeypatch)
    config = _config(npz, tmp_path, compile=True, **extra)
    prepared = prepare(config)
    before = {name: b.clone() for name, b in prepared.model.named_buffers()}
    trainer = Trainer(config, tmp_path, prepared, torch.device("cpu"))
    assert graphs and trainer.net is not trainer.model and trainer.compile is True  # compiled and run once
    after = dict(trainer.model.named_buffers())
    for name, b in before.items():
        assert torch.equal(b, after[name]), name  # the trial's batch-norm update was put back
    assert all(p.grad is None for p in trainer.params)  # the model's and the contrastive head's


def test_compile_that_fails_falls_back_when_automatic_and_stops_when_asked(npz, tmp_path, monkeypatch, capsys):
    _compile_with(monkeypatch, _no_c_compiler)
    failed = r"torch.compile failed \(RuntimeError: Failed to find C compiler"
    with pytest.raises(ConvaeError, match=failed + r".*--compile false"):
        train(_config(npz, tmp_path, "asked", compile=True))
    assert not (tmp_path / "asked").exists()
    # What a GPU would choose on its own (reduce-overhead), failing the same way: eager, with a warning.
    monkeypatch.setattr("convae.runtime.speed_settings", lambda *args: Speed(False, False, "reduce-overhead"))
    result = train(_config(npz, tmp_path, "auto", epochs=1))  # quiet: progress silenced, warnings not
    assert "warning: torch.compile failed (RuntimeError: Failed to find C compiler" in capsys.readouterr().err
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["compile"] is False
    assert result["epochs"] == 1


def test_contrastive_step_compiles_with_its_head(npz, tmp_path, monkeypatch):
    graphs = _counting_compiles(monkeypatch)
    result = train(_config(npz, tmp_path, compile=True, contrastive=0.5, contrastive_head=4, epochs=1))
    assert graphs and json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True
    assert result["metrics"][0]["train_contrastive"] > 0


def test_compiled_steps_see_one_batch_shape(npz, tmp_path, monkeypatch):
    _compile_with(monkeypatch, "eager")
    sizes = {}
    for compile_ in (False, "reduce-overhead"):
        config = _config(npz, tmp_path, compile=compile_, batch_size=20)
        prepared = prepare(config)
        n = len(prepared.train_idx)
        assert n % 20 >= 2  # a smaller last batch exists
        sizes[compile_] = Trainer(config, tmp_path, prepared, torch.device("cpu")).steps_per_epoch
    assert sizes[False] == n // 20 + 1 and sizes["reduce-overhead"] == n // 20


def test_load_on_a_device_that_is_not_there_says_so(npz, tmp_path, monkeypatch):
    import convae

    train(_config(npz, tmp_path, epochs=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConvaeError, match="device 'cuda' asked for, but CUDA is not available"):
        convae.load(tmp_path / "run", device="cuda")


@pytest.mark.parametrize("convs", [4, 5])
def test_bf16_autocast_trains_convolutions_over_one_pixel_maps(tmp_path, convs):
    # Issue 34 saw the loss turn NaN at a random early step under the CPU's default bf16 autocast for this
    # spec (strided convolutions down to 1x1 maps, then a dense code); not reproduced on this machine since
    # (benchmarks/RESULTS.md). Thirty-odd steps with autocast forced on: every loss finite, and it learns.
    arch = " ".join(["conv(4,3,stride=2)"] * convs) + " dense(4)"
    settings = dict(data="digits", arch=arch, epochs=3, optimizer="adam", schedule="constant", lr=1e-3, amp=True)
    result = train(resolve_config({**settings, "out": str(tmp_path / "run"), "quiet": True, "histograms": False}))
    losses = [m["train_loss"] for m in result["metrics"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["amp"] is True

import os
import pickle

import pytest
import torch

from convae import checkpoint
from convae.errors import ConvaeError


def _state(**over):
    state = {key: 0 for key in checkpoint.KEYS - {"format", "version"}}
    state["model"] = {"w": torch.ones(2)}
    state.update(over)
    return state


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _state(epoch=3))
    loaded = checkpoint.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    # The file also loads with plain torch.load(weights_only=True).
    assert torch.load(path, weights_only=True)["format"] == checkpoint.FORMAT


def test_interrupted_write_keeps_old_file(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _state(epoch=1))

    def explode(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, explode)
    assert checkpoint.load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": checkpoint.FORMAT, "payload": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(ConvaeError, match="not a readable convae checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()


def test_foreign_and_mismatched_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConvaeError, match="junk.pt: not a readable convae checkpoint"):
        checkpoint.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConvaeError, match="other.pt: not a convae checkpoint"):
        checkpoint.load(other)
    old = tmp_path / "old.pt"
    torch.save({**_state(), "format": checkpoint.FORMAT, "version": 99}, old)
    with pytest.raises(ConvaeError, match="version 99 is not supported"):
        checkpoint.load(old)
    extra = tmp_path / "extra.pt"
    torch.save({**_state(), "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "surprise": 1}, extra)
    with pytest.raises(ConvaeError, match=r"unexpected \['surprise'\]"):
        checkpoint.load(extra)
    with pytest.raises(ConvaeError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unexpected checkpoint keys"):
        checkpoint.save(tmp_path / "x.pt", _state(bogus=1))

"""Atomic, pickle-free checkpoints: layout, completeness, pruning, safe loading."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from dfm_core import checkpoint
from dfm_core.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointWriteError,
    checkpoint_name,
    config_differences,
    is_complete_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_train_state,
    load_weights,
    read_checkpoint_config,
    save_checkpoint,
    verify_checkpoint,
)

CONFIG = {"trainer": {"lr": 1e-4, "betas": (0.9, 0.99)}, "run": {"model": "mlp", "width": 8}}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def _save(root: Path, step: int, keep_last: int | None = None, **overrides) -> Path:
    model = _model(step)
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    kwargs = {
        "model_state": model.state_dict(),
        "ema_state": _model(step + 100).state_dict(),
        "train_state": {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "rng": [{"generator": torch.Generator().manual_seed(step).get_state()}],
            "nested": {"tuple": (1, 2.5, None, "x"), "list": [torch.arange(3)]},
        },
        "config": CONFIG,
        "keep_last": keep_last,
    }
    kwargs.update(overrides)
    return save_checkpoint(root, step, **kwargs)


def test_layout_and_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 7)
    assert path == tmp_path / "step_000007" == tmp_path / checkpoint_name(7)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "manifest.json",
        "model.safetensors",
        "state.pt",
    ]
    assert (tmp_path / "latest").read_text().strip() == "step_000007"
    expected = json.loads(json.dumps(CONFIG))  # tuples become lists in JSON
    assert json.loads((path / "config.json").read_text()) == expected

    # Plain safetensors readers see the weights and the embedded config.
    raw = load_file(path / "model.safetensors")
    for key, value in _model(7).state_dict().items():
        assert raw[key].shape == value.shape
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == expected

    state, config = load_weights(path)
    assert config == expected
    assert state.keys() == raw.keys()
    ema_state, _ = load_weights(path, ema=True)
    for key, value in _model(107).state_dict().items():
        assert torch.equal(ema_state[key], value)

    train_state = load_train_state(path)
    assert train_state["step"] == 7
    assert train_state["nested"]["tuple"] == (1, 2.5, None, "x")
    assert torch.equal(train_state["nested"]["list"][0], torch.arange(3))
    reloaded = torch.optim.Adam(_model().parameters())
    reloaded.load_state_dict(train_state["optimizer"])


def test_load_weights_accepts_file_checkpoints_dir_and_run_dir(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    direct = load_file(root / "step_000002" / "model.safetensors")
    for where in (root / "step_000002" / "model.safetensors", root, tmp_path / "run"):
        state, config = load_weights(where)
        assert config["run"]["width"] == 8
        assert state.keys() == direct.keys()
        assert all(torch.equal(state[k], direct[k]) for k in state)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_weights(empty, ema=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def test_tied_weights_round_trip_strictly(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight  # tied input/output embedding
    save_checkpoint(
        tmp_path,
        1,
        model_state=model.state_dict(),
        ema_state=model.state_dict(),
        train_state={},
    )
    state, config = load_weights(tmp_path)
    assert config == {}
    fresh = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh[1].weight, model[0].weight)


class _Payload:
    """Pickles to a call of ``_mark``: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_mark, (self.marker,))


def _mark(marker: str) -> None:
    Path(marker).write_text("code ran")


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "evil": _Payload(str(marker))}, path / "state.pt")
    # Inside a checkpoint dir the manifest checksum refuses it before unpickling...
    with pytest.raises(CheckpointCorruptError, match=r"checksum|bytes"):
        load_train_state(path)
    # ...and a loose file is refused by torch.load(weights_only=True).
    loose = tmp_path / "loose"
    loose.mkdir()
    os.replace(path / "state.pt", loose / "state.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_train_state(loose)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_train_state(tmp_path / "nowhere")


def test_incomplete_checkpoints_are_ignored_and_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 3)
    # A run killed mid-save: a temp dir with a half-written file...
    temp = tmp_path / ".tmp-step_000006-0123abcd"
    temp.mkdir()
    (temp / "model.safetensors").write_bytes(b"\x00" * 10)
    # ...a step dir without a manifest (e.g. copied by hand, interrupted)...
    partial = tmp_path / "step_000009"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x01" * 10)
    # ...and a complete-looking dir whose file was truncated afterwards.
    truncated = _save(tmp_path, 12)
    with open(truncated / "state.pt", "r+b") as f:
        f.truncate(5)
    (tmp_path / "latest").write_text("step_000012\n")

    assert not is_complete_checkpoint(temp)
    assert not is_complete_checkpoint(partial)
    assert not is_complete_checkpoint(truncated)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000003"
    _, config = load_weights(tmp_path)  # the pointer names a broken dir: fall back
    assert config["run"]["width"] == 8

    _save(tmp_path, 4)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000003", "step_000004"]


def test_newest_complete_wins_over_a_stale_pointer(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    # Killed between the rename and the pointer update: the dir is complete.
    (tmp_path / "latest").write_text("step_000001\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000002"


def test_keep_last(tmp_path: Path) -> None:
    for step in range(1, 6):
        _save(tmp_path, step, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000004", "step_000005"]
    _save(tmp_path, 6, keep_last=None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 6]
    _save(tmp_path, 7, keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000007"]


def test_steps_past_six_digits_sort_numerically(tmp_path: Path) -> None:
    _save(tmp_path, 999_999)
    _save(tmp_path, 1_000_000)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1000000"


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _save(tmp_path, 2, config={"run": "second"})
    assert load_weights(tmp_path)[1] == {"run": "second"}
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000002"]


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="not a tensor"):
        _save(tmp_path, 2, model_state={"weight": torch.ones(2), "extra": "not a tensor"})
    with pytest.raises(TypeError, match="JSON"):
        _save(tmp_path, 2, config={"callable": print})
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000001"]
    assert load_train_state(tmp_path / "step_000001")["step"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"step": -1}, "step"), ({"keep_last": 0}, "keep_last")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"step": 1, "keep_last": None} | kwargs
    with pytest.raises(ValueError, match=match):
        save_checkpoint(
            tmp_path,
            args["step"],
            model_state={},
            ema_state={},
            train_state={},
            keep_last=args["keep_last"],
        )


# ----------------------------------------------------------------------------- injected faults


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt"])
def test_checksum_catches_damage_of_the_right_size(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    for file in ("model.safetensors", "ema.safetensors", "config.json", "state.pt"):
        assert manifest["sha256"][file] == hashlib.sha256((path / file).read_bytes()).hexdigest()
    verify_checkpoint(path)
    _flip(path / name)
    assert is_complete_checkpoint(path)  # sizes still match: only the checksum sees it
    with pytest.raises(CheckpointCorruptError, match=rf"{name}: content checksum mismatch"):
        verify_checkpoint(path)
    load = {
        "model.safetensors": lambda: load_weights(path),
        "ema.safetensors": lambda: load_weights(path, ema=True),
        "state.pt": lambda: load_train_state(path),
    }[name]
    with pytest.raises(CheckpointCorruptError, match=re.escape(str(path / name))):
        load()


def test_manifests_without_checksums_still_load(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["sha256"]  # written by dfm-core < 0.3
    (path / "manifest.json").write_text(json.dumps(manifest))
    verify_checkpoint(path)
    assert load_train_state(path)["step"] == 1


def test_unreadable_weights_name_the_file(tmp_path: Path) -> None:
    loose = tmp_path / "weights.safetensors"
    loose.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointCorruptError, match=re.escape(str(loose))) as info:
        load_weights(loose)
    assert "SafetensorError" in str(info.value)
    state = tmp_path / "state.pt"
    state.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match=re.escape(str(state))):
        load_train_state(state)


@pytest.mark.parametrize("failing", ["model.safetensors", "state.pt", "manifest.json"])
def test_full_disk_names_the_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    _save(tmp_path, 1)
    real_open = checkpoint._open_for_write

    def disk_full_for(path: Path):
        # /dev/full fails every write with a real ENOSPC from the kernel.
        return open("/dev/full", "wb") if path.name == failing else real_open(path)

    monkeypatch.setattr(checkpoint, "_open_for_write", disk_full_for)
    with pytest.raises(CheckpointWriteError) as info:
        _save(tmp_path, 2)
    assert str(info.value) == f"no space left writing {tmp_path / 'step_000002' / failing}"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000001"]
    assert load_train_state(tmp_path / "step_000001")["step"] == 1


def test_read_only_run_dir_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(path: Path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(checkpoint, "_open_for_write", read_only)
    with pytest.raises(
        CheckpointWriteError, match=r"cannot write .*step_000001/model\.safetensors: Read-only"
    ):
        _save(tmp_path, 1)
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("a file where the checkpoints dir should be")
    monkeypatch.undo()
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*file/step_000001"):
        _save(blocker, 1)


def test_config_differences_and_read_checkpoint_config(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    saved = read_checkpoint_config(tmp_path)
    assert saved == json.loads(json.dumps(CONFIG))  # tuples come back as lists
    assert config_differences(saved, CONFIG) == []  # compared as JSON
    current = {
        "trainer": {"lr": 1e-3, "betas": (0.9, 0.99)},
        "run": {"model": "mlp", "width": 4, "new": 1},
    }
    assert config_differences(saved, current) == [
        "run.new (None -> 1)",
        "run.width (8 -> 4)",
        "trainer.lr (0.0001 -> 0.001)",
    ]
    assert config_differences(saved, current, ["run.width"]) == ["run.width (8 -> 4)"]
    many = config_differences({str(i): i for i in range(20)}, {}, limit=3)
    assert len(many) == 4 and many[-1] == "... and 17 more"

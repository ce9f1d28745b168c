"""Shipped-weights files: float16 round trip, config in the metadata, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dfm_core.diffusion import ForwardDiffusion
from dfm_render import PixelNeRFBaseline, scene_config
from dfm_render.pretrained import (
    SHIP_COMMAND,
    WEIGHTS_DIR,
    config_from_dict,
    load_objects_demo,
    read_scene_config,
    read_weights_metadata,
    save_scene_weights,
    weights_path,
)


@pytest.fixture(scope="module")
def tiny_config():
    config = scene_config("objects-demo").reduced(8)
    # A non-default value in every nested section, so a field that fails to round trip shows.
    return dataclasses.replace(
        config,
        near=3.5,
        renderer=dataclasses.replace(config.renderer, spacing="inverse_depth", chunk=33),
        field=dataclasses.replace(config.field, density_shift=-0.25),
    )


@pytest.mark.parametrize("kind", ["dfm", "baseline"])
def test_round_trip_is_float16_rounding(tiny_config, tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model = tiny_config.build() if kind == "dfm" else tiny_config.build_baseline()
    with torch.no_grad():  # random weights far from the init, so every tensor is exercised
        for param in model.parameters():
            param.normal_(0, 0.3)
    path = save_scene_weights(
        model, tmp_path / "w.safetensors", config=tiny_config, kind=kind, metadata={"steps": 7}
    )
    loaded = load_objects_demo(kind, path)
    assert isinstance(loaded, ForwardDiffusion if kind == "dfm" else PixelNeRFBaseline)
    assert not loaded.training
    original = dict(model.named_parameters())
    for name, value in loaded.named_parameters():
        assert value.dtype == torch.float32
        # Reference: numpy's IEEE binary16 conversion (round to nearest even).
        expected = original[name].detach().numpy().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(value.detach().numpy(), expected, err_msg=name)
    # Buffers are rebuilt from the config, not stored: identical to a fresh build's.
    for name, buffer in loaded.named_buffers():
        torch.testing.assert_close(buffer, dict(model.named_buffers())[name], rtol=0, atol=0)
    meta = read_weights_metadata(path)
    assert meta["kind"] == kind and meta["steps"] == "7" and meta["dtype"] == "float16"


def test_file_holds_float16_parameters_only(tiny_config, tmp_path: Path) -> None:
    from safetensors import safe_open

    model = tiny_config.build()
    path = save_scene_weights(model, tmp_path / "w.safetensors", config=tiny_config, kind="dfm")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        dtypes = {f.get_tensor(n).dtype for n in names}
    assert names == {n for n, _ in model.named_parameters()}
    assert dtypes == {torch.float16}


def test_metadata_config_round_trip(tiny_config, tmp_path: Path) -> None:
    path = save_scene_weights(
        tiny_config.build_baseline(), tmp_path / "b.safetensors", config=tiny_config,
        kind="baseline",
    )  # fmt: skip
    restored = read_scene_config(path)
    assert restored == tiny_config
    assert restored.renderer.spacing == "inverse_depth" and restored.near == 3.5
    # The stored JSON is plain dataclasses.asdict output (readable by other tools).
    assert json.loads(read_weights_metadata(path)["model_config"]) == dataclasses.asdict(
        tiny_config
    )


def test_config_from_dict_rebuilds_nested_and_refuses_unknown_keys() -> None:
    config = scene_config("objects-demo")
    data = dataclasses.asdict(config)
    assert config_from_dict(type(config), data) == config
    data["encoder"]["no_such_field"] = 1
    with pytest.raises(ValueError, match=r"encoder.*no_such_field"):
        config_from_dict(type(config), data)


def test_missing_file_names_it_and_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        load_objects_demo("dfm", missing)
    assert str(missing) in str(info.value)
    assert SHIP_COMMAND in str(info.value)


def test_shipped_path_and_bad_kind(tiny_config, tmp_path: Path) -> None:
    assert weights_path("dfm") == WEIGHTS_DIR / "objects_demo_dfm.safetensors"
    assert weights_path("baseline", tmp_path).parent == tmp_path
    with pytest.raises(ValueError, match="kind"):
        weights_path("regressor")
    path = save_scene_weights(
        tiny_config.build_baseline(), tmp_path / "b.safetensors", config=tiny_config,
        kind="baseline",
    )  # fmt: skip
    with pytest.raises(ValueError, match="holds a 'baseline' model"):
        load_objects_demo("dfm", path)


def test_file_without_config_or_with_wrong_tensors(tiny_config, tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(ValueError, match="model_config"):
        load_objects_demo("dfm", bare)
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {"x": torch.zeros(2)},
        str(wrong),
        metadata={"model_config": json.dumps(dataclasses.asdict(tiny_config)), "kind": "dfm"},
    )
    with pytest.raises(ValueError, match="do not match"):
        load_objects_demo("dfm", wrong)

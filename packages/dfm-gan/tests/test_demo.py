"""The demo training commands run end to end (2 steps) and write loadable weights."""

import json

import torch

from dfm_gan.demo import train_demo_generator, train_demo_inversion
from dfm_gan.inversion import load_inversion_model
from dfm_gan.weights import load_generator


def test_demo_generator_and_inversion_training_write_loadable_weights(tmp_path):
    torch.set_num_threads(1)
    summary = train_demo_generator(tmp_path / "g", preset="demo32", batch_size=2, max_steps=2)
    assert summary["steps"] == 2
    info = json.loads((tmp_path / "g.json").read_text())
    assert info["steps"] == 2 and info["init_kwargs"]["img_resolution"] == 32
    g = load_generator(tmp_path / "g.safetensors")
    out = train_demo_inversion(tmp_path / "g.safetensors", tmp_path, batch_size=2, max_steps=1)
    assert out == {"dfm_steps": 1, "regressor_steps": 1}
    # The generator is found next to the inversion weights (stored by file name).
    model, cfg = load_inversion_model(tmp_path / "inversion.safetensors")
    assert cfg.generator_path == str(tmp_path / "g.safetensors")  # resolved next to the file
    w = g.mapping(torch.randn(1, g.z_dim))
    torch.testing.assert_close(model.forward_model.generator.synthesis(w), g.synthesis(w))
    assert (tmp_path / "regressor.safetensors").is_file()

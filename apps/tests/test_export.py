"""`dfm export stylegan2`: official pickle in, safetensors out, no code run from the pickle."""

from __future__ import annotations

import pickle

import torch

from dfm_apps.cli import main
from dfm_gan.networks import generator_config
from dfm_gan.official_format import write_official_pickle
from dfm_gan.weights import load_generator


def _tiny_generator(seed: int):
    torch.manual_seed(seed)
    generator = generator_config("tiny").build().eval()
    with torch.no_grad():
        generator.mapping.w_avg.normal_()
    return generator


def test_export_converts_an_official_pickle_exactly(tmp_path, capsys):
    g = _tiny_generator(3)
    pkl = tmp_path / "network-snapshot.pkl"
    write_official_pickle(pkl, {"G_ema": (g, g.init_kwargs())})
    assert main(["export", "stylegan2", str(pkl), str(tmp_path / "gen")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_generator(tmp_path / "gen.safetensors")
    z = torch.randn(2, g.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, noise_mode="const"), g(z, noise_mode="const"))
    assert (tmp_path / "gen.json").is_file()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_export_refuses_a_hostile_pickle_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": _Payload(marker)}))
    status = main(["export", "stylegan2", str(pkl), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status != 0 and not marker.exists() and not (tmp_path / "out.safetensors").exists()
    assert len(err.splitlines()) == 1 and "open" in err
    assert main(["export", "stylegan2", str(tmp_path / "missing.pkl"), "x"]) == 2
    assert "no such file" in capsys.readouterr().err

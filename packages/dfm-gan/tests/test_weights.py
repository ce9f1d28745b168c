"""Safe import of official-structure pickles, and our safetensors format."""

import json
import os
import pickle
import shlex
import sys

import pytest
import torch

from dfm_gan.networks import generator_config
from dfm_gan.official_format import write_official_pickle
from dfm_gan.safe_pickle import (
    UnsafePickleError,
    read_official_network,
    safe_load_pickle,
)
from dfm_gan.training import Discriminator
from dfm_gan.weights import (
    convert_official_pickle,
    load_generator,
    load_official_generator,
    save_generator,
)


def _generator(seed: int, **overrides):
    torch.manual_seed(seed)
    g = generator_config("tiny", conv_clamp=256.0, **overrides).build().eval()
    with torch.no_grad():  # make every tensor non-trivial, so a skipped copy would show
        g.mapping.w_avg.normal_()
        for name, p in g.named_parameters():
            if name.endswith(("noise_strength", "bias")):
                p.normal_(0, 0.3)
    return g


def _official_pickle(path, protocol=pickle.DEFAULT_PROTOCOL, extra_state=None):
    G, G_ema = _generator(1), _generator(2)
    D = Discriminator(8, channel_base=64, channel_max=16)
    networks = {
        "G": (G, G.init_kwargs()),
        "D": (D, {"c_dim": 0, "img_resolution": 8, "img_channels": 3}),
        "G_ema": (G_ema, G_ema.init_kwargs()),
        "augment_pipe": None,
    }
    write_official_pickle(
        path,
        networks,
        training_set_kwargs={"path": "faces.zip", "resolution": 8},
        extra_state=extra_state,
        protocol=protocol,
    )
    return G, G_ema


def _outputs(g):
    z = torch.randn(3, g.z_dim, generator=torch.Generator().manual_seed(0))
    return g(z, truncation_psi=0.7, noise_mode="const")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_import_round_trip_reproduces_the_source_generator_exactly(tmp_path, protocol):
    path = tmp_path / "network-snapshot.pkl"
    _, G_ema = _official_pickle(path, protocol)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # stand-ins removed
    network = read_official_network(path)
    assert network.class_name == "Generator"
    assert network.init_kwargs["synthesis_kwargs"] == G_ema.init_kwargs()["synthesis_kwargs"]
    assert type(network.init_kwargs["mapping_kwargs"]) is dict  # EasyDict -> dict
    source = G_ema.state_dict()
    assert network.state_dict.keys() == source.keys()
    for name, value in source.items():
        assert torch.equal(network.state_dict[name], value), name
    imported = load_official_generator(path)
    assert torch.equal(_outputs(imported), _outputs(G_ema))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # nothing imported


def test_the_requested_network_is_returned(tmp_path):
    path = tmp_path / "snap.pkl"
    G, G_ema = _official_pickle(path)
    assert torch.equal(_outputs(load_official_generator(path, key="G")), _outputs(G))
    assert not torch.equal(_outputs(G), _outputs(G_ema))
    with pytest.raises(ValueError, match="no network 'G_avg'"):
        read_official_network(path, key="G_avg")


class _OpenFile:
    """Unpickling this with the stock pickle creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Shell:
    """Unpickling this with the stock pickle runs a shell command."""

    def __init__(self, path):
        self.cmd = f"touch {shlex.quote(str(path))}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [(_OpenFile, f"{open.__module__}.open"), (_Shell, f"{os.system.__module__}.system")],
)
def test_a_payload_in_the_pickle_is_refused_and_never_runs(tmp_path, payload, global_name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    _official_pickle(path, extra_state={"G_ema": {"hidden": payload(marker)}})
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        load_official_generator(path)
    with pytest.raises(UnsafePickleError):
        convert_official_pickle(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_the_payload_is_live_for_the_stock_unpickler(tmp_path):
    # Guards the test above: the same payload does create the file when pickle runs it.
    marker = tmp_path / "created"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _OpenFile(marker)}))
    with pytest.raises(UnsafePickleError, match=r"\.open"):
        safe_load_pickle(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())["x"].close()
    assert marker.exists()


def test_other_dangerous_globals_are_refused_by_name(tmp_path):
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load")]:
        data = f"c{module}\n{name}\n(S'1'\ntR.".encode()
        with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
            safe_load_pickle(__import__("io").BytesIO(data))


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pkl"):
        load_official_generator(tmp_path / "missing.pkl")
    not_networks = tmp_path / "list.pkl"
    not_networks.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a dict of networks"):
        read_official_network(not_networks)


def test_convert_writes_safetensors_and_json_that_load_exactly(tmp_path):
    pkl = tmp_path / "ffhq.pkl"
    _, G_ema = _official_pickle(pkl)
    out = convert_official_pickle(pkl, tmp_path / "converted" / "ffhq")
    assert out.name == "ffhq.safetensors"
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["init_kwargs"]["img_resolution"] == 8
    assert info["source"] == "ffhq.pkl" and info["network"] == "G_ema"
    loaded = load_generator(out)
    assert torch.equal(_outputs(loaded), _outputs(G_ema))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_save_load_round_trip_and_errors(tmp_path):
    g = _generator(3)
    path = save_generator(g, tmp_path / "g.safetensors")
    assert torch.equal(_outputs(load_generator(path)), _outputs(g))
    assert torch.equal(_outputs(load_generator(tmp_path / "g")), _outputs(g))
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_generator(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="init_kwargs"):
        load_generator(tmp_path / "bare.safetensors")

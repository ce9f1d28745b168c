"""`python -m dfm_data` synth/validate round trips, and validate finding the first bad file."""

from __future__ import annotations

import subprocess
import sys

from dfm_data.cli import main


def test_synth_and_validate_every_world(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "objects",
                str(tmp_path / "o"),
                "--n-sequences",
                "3",
                "--n-frames",
                "4",
                "--size",
                "12x16",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["validate", "co3d", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "frames: 12" in out and "sequences: 3" in out
    assert (
        main(
            [
                "synth",
                "rooms",
                str(tmp_path / "r"),
                "--n-clips",
                "2",
                "--n-frames",
                "3",
                "--size",
                "9x16",
                "--quiet",
            ]
        )
        == 0
    )
    for layout, sub in (("mat", "dfm"), ("txt", "dfm"), ("torch", "pixelsplat")):
        root = str(tmp_path / "r" / sub)
        args = ["validate", "re10k", root, "--layout", layout, "--quiet"]
        # The loader demands 360x640 frames by default, so the validator does too.
        assert main(args) == 1
        assert "expected 360x640" in capsys.readouterr().out
        assert main([*args, "--expected-size", "9x16"]) == 0
        assert main([*args, "--expected-size", "any"]) == 0
    assert (
        main(
            [
                "synth",
                "motion",
                str(tmp_path / "v"),
                "--n-sequences",
                "3",
                "--size",
                "8x12",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["validate", "vimeo", str(tmp_path / "v"), "--quiet"]) == 1  # loader wants 256x448
    assert "expected 256x448" in capsys.readouterr().out
    assert (
        main(["validate", "vimeo", str(tmp_path / "v"), "--quiet", "--expected-size", "8x12"]) == 0
    )
    assert "frames of 12x8: 9" in capsys.readouterr().out


def test_validate_reports_first_bad_file(tmp_path, capsys):
    main(
        [
            "synth",
            "objects",
            str(tmp_path / "o"),
            "--n-sequences",
            "2",
            "--n-frames",
            "3",
            "--size",
            "12x16",
            "--quiet",
        ]
    )
    bad = sorted((tmp_path / "o" / "orb").glob("*/images/frame000002.jpg"))[0]
    bad.write_bytes(b"broken")
    assert main(["validate", "co3d", str(tmp_path / "o"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS FOUND" in out and "CorruptImageError" in out and str(bad) in out
    assert main(["validate", "vimeo", str(tmp_path / "nothing"), "--quiet"]) == 1


def test_module_entry_point(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "dfm_data", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "synth" in r.stdout and "validate" in r.stdout

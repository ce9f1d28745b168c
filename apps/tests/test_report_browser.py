"""report.html as a person sees it: headless Chromium (``nox -s browser``).

``tools/browser_check.py`` renders a page through the DevTools protocol, takes a
screenshot and lists every broken image/video reference, request leaving the machine
and console error. First it must catch each such fault planted in a page (and pass a
page whose images and videos are fine), then a real report from a tiny ``dfm train``
must come out clean, offline, with a screenshot that shows something.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dfm_apps.cli import main

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> ModuleType:
    """``tools/browser_check.py`` as a module, with a Chromium to drive."""
    spec = importlib.util.spec_from_file_location(
        "browser_check", ROOT / "tools" / "browser_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    try:
        module.install_chromium()
    except module.BrowserError as error:
        pytest.fail(f"the browser checks need Chromium: {error}")
    return module


def _frames() -> np.ndarray:
    """8 frames of a 32x32 moving gradient, uint8 (T, H, W, 3)."""
    t, y, x = np.meshgrid(np.arange(8), np.arange(32), np.arange(32), indexing="ij")
    red = (x * 8 + t * 16) % 256
    return np.stack([red, y * 8, np.full_like(red, 128)], axis=-1).astype(np.uint8)


def _write_video(path: Path, codec: str) -> None:
    import imageio

    writer = imageio.get_writer(path, fps=8, codec=codec, macro_block_size=16)
    for frame in _frames():
        writer.append_data(frame)
    writer.close()


def test_checker_passes_a_page_whose_images_and_videos_work(
    browser: ModuleType, tmp_path: Path
) -> None:
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "picture.png", _frames()[0])
    _write_video(tmp_path / "turntable.mp4", "libx264")  # H.264, as reports write them
    _write_video(tmp_path / "depth.webm", "libvpx-vp9")
    inline = base64.b64encode((tmp_path / "depth.webm").read_bytes()).decode()
    page = tmp_path / "good.html"
    page.write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ok</title></head>'
        '<body><figure><img alt="a picture" src="picture.png"><figcaption>p</figcaption></figure>'
        '<video src="turntable.mp4" controls loop></video>'
        '<video preload="none"><source src="depth.webm" type="video/webm"></video>'
        f'<video muted><source src="data:video/webm;base64,{inline}" type="video/webm"></video>'
        "<script>console.log('fine');</script></body></html>"
    )
    result = browser.check_report(page, screenshot=tmp_path / "good.png")
    assert result.ok, result.problems
    assert (result.images, result.media) == (1, 3)
    assert result.screenshot is not None and result.screenshot.stat().st_size > 1000


def test_checker_names_every_broken_reference_and_console_error(
    browser: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "not-a-video.mp4").write_text("these bytes are no video")
    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><html><head><meta charset="utf-8">'
        '<link rel="stylesheet" href="https://cdn.example.invalid/style.css"></head><body>'
        '<img alt="missing" src="missing.png">'
        '<img alt="lazy" loading="lazy" src="far-below.png" style="margin-top:4000px">'
        '<img alt="garbage" src="data:image/png;base64,AAAA">'
        '<video src="not-a-video.mp4"></video>'
        '<video preload="none"><source src="nowhere.webm" type="video/webm"></video>'
        "<script>console.error('drawing failed'); null.x;</script></body></html>"
    )
    result = browser.check_report(page)
    text = "\n".join(result.problems)
    expected = {
        "cdn stylesheet": "https://cdn.example.invalid/style.css",
        "missing image": "missing.png",
        "lazy missing image": "far-below.png",
        "undecodable image": "image does not display: <img src='data:image/png;base64,AAAA'>",
        "corrupt video": "video does not play: src='file://",
        "missing video source": "nowhere.webm",
        "console.error": "console.error: drawing failed",
        "exception": "uncaught exception: TypeError",
    }
    missed = {name: needle for name, needle in expected.items() if needle not in text}
    assert not missed, f"not reported: {missed}\nreported:\n{text}"
    assert "not-a-video.mp4" in text


class _References(HTMLParser):
    """Every src/href of a page, read without a browser (an independent offline check)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.alts: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "poster") and value is not None:
                self.refs.append((tag, name, value))
        if tag == "img":
            self.alts.append(dict(attrs).get("alt"))


def test_a_trained_report_renders_clean_offline(
    browser: ModuleType, tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "projection", "--run-dir", str(run_dir), *tiny]) == 0
    capsys.readouterr()
    report = run_dir / "report.html"

    parser = _References()
    parser.feed(report.read_text())
    assert parser.refs, "the report references no picture"
    assert all(value.startswith("data:") for _, _, value in parser.refs), parser.refs
    assert all(parser.alts), "every picture needs a caption (alt text)"

    result = browser.check_report(report, screenshot=tmp_path / "report.png")
    assert result.ok, result.problems
    assert result.images == len(parser.alts) >= 3  # samples, denoising, training loss

    import imageio.v3 as iio

    shot = iio.imread(result.screenshot)
    assert shot.shape[1] == browser.VIEWPORT[0] and shot.shape[0] >= browser.VIEWPORT[1]
    ink = (shot[..., :3].astype(int).sum(axis=-1) < 600).mean()  # non-white pixels
    assert ink > 0.01, f"the screenshot is almost blank ({ink:.2%} ink)"
    print(f"\nbrowser: {report} checked in {result.seconds:.1f} s, screenshot {result.screenshot}")


def test_the_demo_report_renders_clean_offline(
    browser: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dfm demo` (every application whose weights are installed): pictures and videos play."""
    out = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    parser = _References()
    parser.feed(report.read_text())
    videos = [value for tag, _, value in parser.refs if tag == "video"]
    assert all(parser.alts), "every picture needs a caption (alt text)"
    assert all((out / value).is_file() for value in videos), videos  # relative, next to the page
    ran = [line.split()[0] for line in printed.splitlines()[1:] if line[:1].isalpha()]
    if any(name in ran for name in ("scenes", "motion", "gan")):
        assert videos, "the demo's applications write videos; the page links none"
    result = browser.check_report(report, screenshot=tmp_path / "demo.png")
    assert result.ok, result.problems
    assert result.images == len(parser.alts) >= 2
    assert result.media == len(videos)  # every linked video was loaded and played
    print(f"\nbrowser: {report} ({len(videos)} videos) checked in {result.seconds:.1f} s")

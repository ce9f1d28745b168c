"""Evaluation protocols of the inverse-graphics application (``dfm eval RUN_DIR --protocol``).

A protocol fixes *which* context/target pairs are scored and *how*, so a figure can be
compared with a published one. Both protocols sample K scenes per pair from its context
view(s) (the first target camera is the one the diffusion denoises), render every sample
and the pixelNeRF baseline at each target camera, write the frames as PNG files, and score
the frames as written (uint8; the original wrote such frames for an offline comparison it
did not ship, so its frame choice and metric code are unknown).

Pairs (``PROTOCOLS``; chosen by ``dfm_apps.scene_pairs``):

* ``co3d`` (CO3D v2, or the objects world written in its layout): the category's
  ``eval_batches/eval_batches_fewview_dev.json`` when present (each batch is
  ``[target, *sources]``; the first ``protocol.num_context`` sources are the context), over the
  split ``evaluation.protocol.split`` (``test``: where CO3D's eval batches come from). Without
  that file, or with ``evaluation.protocol.eval_batches=false``: the seeded choice below.
  The original's own script used val sequences, context frame 0 and target frame 100, and
  computed no metric (reference: dfm-original section 5).
* ``re10k`` (RealEstate10k): the pixelSplat evaluation index
  (``evaluation.protocol.index_file``: ``{clip: {"context": [i, j], "target": [k, ...]}}``
  or ``null`` to skip a clip; positions in the clip's timestamp order) when given, its clips
  in sorted order; the first ``protocol.num_context`` context positions are used (one by
  default: DFM's single-image setting; pixelSplat's index lists two). Without an index: the
  seeded choice below (one context).
* **Seeded choice** (documented, deterministic): sequences/clips in the loader's sorted order,
  the first ``num_pairs``; pair ``i`` draws from ``numpy.random.default_rng([pair_seed, i])``
  a gap ``g`` uniform in ``[data.min_gap, data.max_gap]`` (at most ``frames - 1``), then the
  context position ``c`` uniform in ``[0, frames - g)``; the target is ``c + g``. Pair ``i``
  does not depend on ``num_pairs``.

Metrics (per target image, averaged over images and samples; ``image_metrics`` defines each):

* **full image**: PSNR (data range 1), SSIM (Wang et al.: 11x11 Gaussian, sigma 1.5), LPIPS
  (``lpips_net``, VGG by default) and FID (torch-fidelity's Inception, all K samples of every
  target against the true targets). The image region of the DFM paper's published CO3D
  hydrant figures (PSNR 17.47, LPIPS 0.42, FID 84.63) and of pixelSplat's RealEstate10k
  metrics (which use skimage's sample-covariance SSIM: a slightly different variant).
* **masked object** (CO3D only: its foreground masks, ``> mask_threshold`` after the same
  crop and resize as the image): PSNR and SSIM over the object's pixels, LPIPS and FID on
  both images composited on a constant ``background``. The region of the 2025 re-evaluation
  of DFM with the official code (hydrant: PSNR 23.37, LPIPS 0.133, FID 60.1; Liao et al.).
  RealEstate10k has no masks: not computed.
* **stochastic**: best-of-K PSNR (full and masked), mean pairwise RMSE (and LPIPS) between the
  K samples, and, where the ground truth allows (the synthetic worlds read as real data: the
  objects world's hidden back, the rooms world's wall behind the first camera), palette
  coverage at the diffusion target: the fraction of palette colours that at least one of
  the K samples shows over the hidden pixels (exact renders of the true scene painted with
  each colour are the candidates; a sample counts only when it is a real palette colour,
  ``evaluation.palette_margin``), and the fraction of samples that are one.

LPIPS and FID need weight files the user downloads; a missing file is an error naming it,
checked before any sampling. ``evaluation.protocol.lpips=false`` / ``fid=false`` switch them
off, and they are then reported as "not computed" with that reason, never left out silently.

Outputs under ``out_dir``: ``metrics.json`` (every figure or null + the reason, the pairs, the
protocol each figure follows), ``metrics.md`` (the same as a markdown table), ``pairs.png``
and ``frames/<pair>/`` (context, truth, mask, sample and baseline PNGs).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dfm_apps.scene_pairs import EvalPair, choose_pairs

__all__ = [
    "PROTOCOLS",
    "ProtocolConfig",
    "check_protocol_weights",
    "co3d_mask",
    "default_protocol",
    "evaluate_protocol",
    "metrics_markdown",
    "room_palette_candidates",
    "run_protocol",
    "score_images",
    "uses_protocol",
    "world_truth",
]

PROTOCOLS: dict[str, str] = {
    "co3d": (
        "CO3D v2 (or the objects world): eval_batches pairs if present, else seeded; full-image "
        "and masked-object PSNR/SSIM/LPIPS/FID, best-of-K PSNR, diversity, palette coverage"
    ),
    "re10k": (
        "RealEstate10k: pixelSplat evaluation index if given, else seeded pairs; full-image "
        "PSNR/SSIM/LPIPS/FID, best-of-K PSNR, diversity, palette coverage (rooms world)"
    ),
}
"""Protocol name -> one line (``dfm eval --protocol NAME``); a protocol scores its own format."""

SPLITS = ("train", "val", "test")
LPIPS_NETS = ("vgg", "alex")

FOLLOWS = {
    "full": (
        "whole images, the region of the DFM paper's published CO3D hydrant figures (PSNR "
        "17.47, LPIPS 0.42, FID 84.63; its frame choice is not public) and of pixelSplat's "
        "RealEstate10k metrics (whose SSIM uses sample covariances)"
    ),
    "masked": (
        "object pixels only (PSNR/SSIM over the mask; LPIPS/FID on both images composited on "
        "a constant background), the region of the 2025 re-evaluation of DFM with the official "
        "code (hydrant PSNR 23.37, LPIPS 0.133, FID 60.1; Liao et al. 2025)"
    ),
    "stochastic": "over the K samples of each pair (no published counterpart)",
}
"""Which published protocol each group of figures follows (written into metrics.json/md)."""


@dataclass
class ProtocolConfig:
    """Options of the fixed-pair protocols (``evaluation.protocol`` in the 3D presets)."""

    split: str = "test"
    """Split whose sequences/clips are evaluated (RealEstate10k has train and test only)."""
    num_pairs: int = 100
    """Most pairs evaluated (the first ones of the chosen list)."""
    num_samples: int = 4
    """Samples K per pair (best-of-K, diversity and coverage need K >= 2)."""
    num_context: int = 1
    """Most context views per pair from an eval batch / index entry (1: the single-image
    setting of the paper's figures; never more than ``model.num_context``)."""
    pair_seed: int = 0
    """Seed of the seeded pair choice (module docstring)."""
    eval_batches: bool = True
    """CO3D: use the category's eval_batches file when it exists."""
    index_file: str | None = None
    """RealEstate10k: pixelSplat's ``evaluation_index_re10k.json`` (null: seeded pairs)."""
    lpips: bool = True
    """Compute LPIPS (needs the backbone weights; false: reported as not computed)."""
    lpips_net: str = "vgg"
    """LPIPS backbone: ``vgg`` (what DFM, pixelNeRF and pixelSplat report) or ``alex``."""
    lpips_weights: str | None = None
    """torchvision's backbone file (null: ``$TORCH_HOME/hub/checkpoints/<file>``)."""
    fid: bool = True
    """Compute FID (needs the Inception weights; false: reported as not computed)."""
    fid_weights: str | None = None
    """torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``."""
    mask_threshold: float = 0.5
    """CO3D foreground probability above which a pixel belongs to the object."""
    background: float = 1.0
    """Fill of the non-object pixels for masked LPIPS/FID (1: white)."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(
                f"evaluation.protocol.split: expected one of {list(SPLITS)}, got {self.split!r}"
            )
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(
                f"evaluation.protocol.lpips_net: expected one of {list(LPIPS_NETS)}, "
                f"got {self.lpips_net!r}"
            )
        for name in ("num_pairs", "num_samples", "num_context"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"evaluation.protocol.{name}: expected >= 1, got {getattr(self, name)}"
                )
        if not 0 <= self.mask_threshold < 1 or not 0 <= self.background <= 1:
            raise ValueError(
                "evaluation.protocol.mask_threshold: expected [0, 1) and background [0, 1], got "
                f"{self.mask_threshold}, {self.background}"
            )


def default_protocol(config: Any) -> str:
    """The protocol that scores a config's data (``PROTOCOLS`` key = ``data.format``)."""
    return str(config.data.format)


def uses_protocol(config: Any) -> bool:
    """Whether a config's ``evaluate`` runs a protocol: every dataset but the synthesized
    objects world (which has its own held-out world and hidden-side scores)."""
    return not (config.data.format == "co3d" and config.data.synthesize)


def _lpips_path(p: ProtocolConfig) -> Path:
    from dfm_render.losses import LPIPS_BACKBONES, torchvision_checkpoint

    if p.lpips_weights is not None:
        return Path(p.lpips_weights)
    return torchvision_checkpoint(LPIPS_BACKBONES[p.lpips_net][0])


def check_protocol_weights(p: ProtocolConfig) -> None:
    """Fail early when LPIPS or FID is asked for and its weight file is missing.

    Raises:
        MissingWeightsError: naming the file, where to download it, and the switch that turns
            the metric off.
    """
    from dfm_apps.image_metrics import FID_WEIGHTS_FILE, FID_WEIGHTS_URL, MissingWeightsError
    from dfm_render.losses import LPIPS_BACKBONES

    if p.lpips:
        path = _lpips_path(p)
        if not path.is_file():
            raise MissingWeightsError(
                f"evaluation.protocol.lpips_weights: LPIPS-{p.lpips_net} backbone not found at "
                f"{path}; download {LPIPS_BACKBONES[p.lpips_net][1]} and put it there (or pass "
                "evaluation.protocol.lpips_weights=PATH), or set evaluation.protocol.lpips=false "
                "(LPIPS is then reported as not computed)"
            )
    if p.fid and (p.fid_weights is None or not Path(p.fid_weights).is_file()):
        where = "is not set" if p.fid_weights is None else f"{p.fid_weights} does not exist"
        raise MissingWeightsError(
            f"evaluation.protocol.fid_weights {where}; download {FID_WEIGHTS_URL} and pass "
            f"evaluation.protocol.fid_weights=PATH/{FID_WEIGHTS_FILE}, or set "
            "evaluation.protocol.fid=false (FID is then reported as not computed)"
        )


# ----------------------------------------------------------------------------- views and masks


def _views_at(dataset: Any, pair: EvalPair) -> Any:
    """The ``ViewBatch`` (B = 1) of a pair: its context and target views, no novel view."""
    return dataset.views_at(pair.index, list(pair.context), list(pair.target))


def co3d_mask(dataset: Any, index: int, position: int, threshold: float) -> Tensor | None:
    """The object mask of one CO3D frame at the model's image size.

    The mask PNG (foreground probability) is brought to the image's size, cropped to the
    same centre square as the image and resized with the same antialiased filter, then
    thresholded.

    Returns:
        ``(S, S)`` bool, or None when the frame has no mask.
    """
    from dfm_data.cameras import centre_square_crop
    from dfm_data.images import load_mask_png, resize_plane

    frame = dataset.frames[dataset.sequences[index][1]][position]
    if frame.mask_path is None:
        return None
    h, w = frame.image_hw
    mask = resize_plane(load_mask_png(dataset.root / frame.mask_path), (h, w), nearest=False)
    top, left, side = centre_square_crop(h, w)
    size = dataset.config.image_size
    crop = resize_plane(mask[top : top + side, left : left + side], (size, size), nearest=False)
    return torch.from_numpy(crop > threshold)


def world_truth(config: Any, root: Path) -> dict | None:
    """The ground truth of a synthetic world read as real data, or None (real data).

    The objects world keeps it in ``<root>/<category>/synthetic_ground_truth.json``; the rooms
    world in ``ground_truth.json`` beside its layouts (``<world>/pixelsplat``, ``<world>/dfm``).
    """
    if config.data.format == "co3d":
        path = root / config.data.categories[0] / "synthetic_ground_truth.json"
        world = "objects"
    else:
        path = root.parent / "ground_truth.json"
        world = "rooms"
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    return truth if truth.get("world") == world else None


def room_palette_candidates(
    dataset: Any, truth: dict, index: int, item: Any, supersample: int = 4
) -> tuple[Tensor, Tensor]:
    """The target view 0 of a rooms-world clip with its back wall painted each palette colour.

    The rooms world's hidden attribute is the colour of the wall behind the first camera. The
    room is rendered exactly at the item's (absolute) target camera at the model's image size
    (``supersample``^2 rays per pixel, close to the loader's antialiased resize of the frame).

    Returns:
        candidates ``(P, 3, S, S)`` in [0, 1], and hidden ``(S, S)`` bool: the pixels that show
        the back wall (more than 90 % of their area).
    """
    from dfm_data.worlds.rooms import RoomScene, render_room

    record = truth["clips"][dataset.clips[index]]
    scene = RoomScene(**record["scene"])
    size = dataset.config.image_size
    c2w = (item.world_from_context[0].double() @ item.target.c2w[0, 0].double()).numpy()
    k_px = item.target.intrinsics[0, 0].double().numpy() * size  # normalised -> pixels
    renders, hidden = [], None
    for colour in truth["palette"]:
        walls = (*scene.wall_colours[:5], tuple(colour))
        painted = dataclasses.replace(scene, wall_colours=walls)
        out = render_room(painted, c2w, k_px, size, size, supersample)
        renders.append(out["rgb"])
        hidden = out["hidden"]
    candidates = torch.from_numpy(np.stack(renders)).permute(0, 3, 1, 2).float()
    return candidates, torch.from_numpy(hidden > 0.9)


# ----------------------------------------------------------------------------- scores


def _quantise(images: Tensor) -> Tensor:
    """What a PNG of the images holds, as floats in [0, 1] (metrics see the written frames)."""
    return (images.clamp(0, 1) * 255).round().to(torch.float64) / 255


def _mean(values: Tensor) -> float | None:
    """Mean over the defined values (NaN: an empty mask); ``inf`` (a perfect image) is kept."""
    defined = values[~torch.isnan(values)]
    return float(defined.to(torch.float64).mean()) if len(defined) else None


def score_images(
    samples: Tensor,
    truth: Tensor,
    *,
    masks: Tensor | None = None,
    lpips: Any = None,
    fid_weights: str | None = None,
    background: float = 1.0,
) -> dict[str, float | None]:
    """Every protocol metric of one model's renders (``None``: could not be computed here).

    Args:
        samples: ``(N, K, 3, H, W)`` renders in ``[0, 1]``: K samples of each of N target images.
        truth: ``(N, 3, H, W)`` true target images in ``[0, 1]``.
        masks: optional ``(N, H, W)`` bool object masks; images whose mask is empty are left
            out of the masked figures.
        lpips: an ``LPIPSMetric`` (or any ``(a, b) -> (P,)`` distance), or None to skip LPIPS.
        fid_weights: torch-fidelity's Inception file, or None to skip FID.
        background: fill outside the mask for masked LPIPS/FID.

    Returns:
        ``{psnr,ssim,lpips,fid}_{full,masked}``, ``best_of_k_psnr_{full,masked}``,
        ``diversity_rmse``, ``diversity_lpips`` -> value (per-image means over images and
        samples; FID over the pooled sets).
    """
    from dfm_apps.image_metrics import (
        best_of_k_psnr,
        composite_on_background,
        fid,
        pairwise_diversity,
        psnr,
        ssim,
    )

    n, k = samples.shape[:2]
    flat = samples.flatten(0, 1)  # (N * K, 3, H, W), image-major
    truth_k = truth.repeat_interleave(k, dim=0)
    out: dict[str, float | None] = {}
    for region, mask in (("full", None), ("masked", masks)):
        keep = torch.ones(n, dtype=torch.bool) if mask is None else mask.flatten(1).any(dim=1)
        keep_k = keep.repeat_interleave(k)
        if (region == "masked" and masks is None) or not keep.any():
            for metric in ("psnr", "ssim", "lpips", "fid", "best_of_k_psnr"):
                out[f"{metric}_{region}"] = None  # no masks, or every mask empty
            continue
        pred, ref = flat[keep_k], truth_k[keep_k]
        mask_k = None if mask is None else mask.repeat_interleave(k, dim=0)[keep_k]
        out[f"psnr_{region}"] = _mean(psnr(pred, ref, mask=mask_k))
        out[f"ssim_{region}"] = _mean(ssim(pred, ref, mask=mask_k))
        if mask_k is not None:  # LPIPS and FID need whole images: composite both
            pred = composite_on_background(pred, mask_k, background)
            ref = composite_on_background(ref, mask_k, background)
        out[f"lpips_{region}"] = _mean(lpips(pred, ref)) if lpips is not None else None
        truth_set = truth[keep] if mask is None else ref[::k]
        enough = len(pred) >= 2 and len(truth_set) >= 2
        out[f"fid_{region}"] = (
            fid(pred, truth_set, weights_path=fid_weights)
            if fid_weights is not None and enough
            else None
        )
        m = None if mask is None else mask[keep]
        out[f"best_of_k_psnr_{region}"] = (
            _mean(best_of_k_psnr(samples[keep], truth[keep], mask=m)) if k >= 2 else None
        )
    out["diversity_rmse"] = _mean(pairwise_diversity(samples, metric="rmse")) if k >= 2 else None
    out["diversity_lpips"] = (
        _mean(pairwise_diversity(samples, metric=lpips)) if k >= 2 and lpips is not None else None
    )
    return out


def _reasons(
    p: ProtocolConfig, k: int, has_masks: bool, has_truth: bool, n_images: int
) -> dict[str, str]:
    """Why a figure is not computed, by metric-name fragment."""
    why: dict[str, str] = {}
    if not p.lpips:
        why["lpips"] = "not computed: evaluation.protocol.lpips=false"
    if not p.fid:
        why["fid"] = "not computed: evaluation.protocol.fid=false"
    elif n_images < 2:
        why["fid"] = "not computed: FID needs at least 2 images per set"
    if not has_masks:
        why["masked"] = "not computed: this dataset has no object masks"
    if has_truth:
        why["palette"] = "not computed: no diffusion target shows the hidden side"
    if k < 2:
        why["best_of_k"] = why["diversity"] = why["palette"] = "not computed: needs K >= 2"
    if not has_truth:
        why["palette"] = "not computed: no ground truth of the hidden side (synthetic worlds only)"
    return why


def _reason(key: str, why: dict[str, str]) -> str:
    for fragment in ("masked", "best_of_k", "diversity", "palette", "lpips", "fid"):
        if fragment in key and fragment in why:
            return why[fragment]
    return "not computed: no image qualified (e.g. every mask empty)"


# ----------------------------------------------------------------------------- the protocol


def _save_png(path: Path, image: Tensor) -> None:
    """(3, H, W) in [0, 1] or (H, W) bool -> PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.float() if image.dim() == 2 else image.permute(1, 2, 0)
    Image.fromarray((array * 255).round().to(torch.uint8).numpy()).save(path)


def run_protocol(
    config: Any, trained: Any, out_dir: Path, *, protocol: str, run_dir: Path | None = None
) -> Any:
    """Run one evaluation protocol on a trained model; writes metrics.json and metrics.md.

    Args:
        config: the run's ``ScenesConfig`` (``evaluation.protocol`` holds the options,
            ``evaluation.steps/sampler/guidance_scale/temperature/seed`` the sampler's).
        trained: ``scenes.Trained`` (EMA DFM model and baseline).
        out_dir: output folder (created).
        protocol: a key of ``PROTOCOLS`` matching ``config.data.format``.
        run_dir: the run directory (named in metrics.json).

    Returns:
        ``scenes.Evaluation``: the computed figures (``scores_dict()``) and the files written.

    Raises:
        ValueError: unknown protocol, or one for another data format; no pair to score.
        MissingWeightsError: LPIPS/FID asked for and their weights missing (before sampling).
        DataRootError: the dataset root does not exist.
    """
    from dfm_apps import media
    from dfm_apps.image_metrics import LPIPSMetric, mode_coverage
    from dfm_apps.scene_heldout import classify_backs, palette_candidates
    from dfm_apps.scenes import (
        Evaluation,
        _set_threads,
        _views_dataset,
        camera_like,
        check_data_root,
        render_at,
        sample_scenes,
        scene_batch_from_views,
    )
    from dfm_render import VolumeRenderer

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if protocol != config.data.format:
        raise ValueError(
            f"protocol {protocol!r} scores data.format={protocol}, but this run reads "
            f"data.format={config.data.format}; use --protocol {config.data.format}"
        )
    p: ProtocolConfig = config.evaluation.protocol
    ev = config.evaluation
    check_protocol_weights(p)
    _set_threads(config)
    root = check_data_root(config.data)
    dataset = _views_dataset(config, root, p.split, 0)
    pairs, source = choose_pairs(config, protocol, dataset)
    if not pairs:
        raise ValueError(f"no evaluation pair in split {p.split!r} of {root} ({source})")
    truth_json = world_truth(config, root)
    lpips = LPIPSMetric(p.lpips_net, backbone_path=_lpips_path(p)) if p.lpips else None
    out_dir = Path(out_dir)
    diffusion, baseline = trained.diffusion.eval(), trained.baseline.eval()
    renderer = VolumeRenderer(config.model.renderer).eval()
    k = p.num_samples
    dfm_images, base_images, truths, masks = [], [], [], []
    coverage, real = [], []
    listed, rows = [], []
    for number, pair in enumerate(media.progress(pairs, desc=f"protocol {protocol}")):
        item = _views_at(dataset, pair)
        batch = scene_batch_from_views(
            item, patch_size=None, absolute_pose=config.model.encoder.absolute_pose
        )
        seeds = [ev.seed * 1000 + number * k + j for j in range(k)]
        out = sample_scenes(
            diffusion, batch, num_samples=k, seeds=seeds, steps=ev.steps,
            guidance_scale=ev.guidance_scale, temperature=ev.temperature, sampler=ev.sampler,
        )  # fmt: skip
        c2w, intrinsics = item.target.c2w, item.target.intrinsics  # (1, T, 4, 4), (1, T, 3, 3)
        cams = camera_like(
            batch.target_params, c2w.expand(k, -1, -1, -1), intrinsics.expand(k, -1, -1, -1)
        )
        renders = _quantise((render_at(renderer, out.signal, cams).observation + 1) / 2)
        with torch.no_grad():
            base_scene = baseline.scene(batch.context)
        base = render_at(renderer, base_scene, camera_like(batch.target_params, c2w, intrinsics))
        base = _quantise((base.observation[0] + 1) / 2)  # (T, 3, H, W)
        truth = _quantise((item.target.images[0] + 1) / 2)  # (T, 3, H, W)
        dfm_images.append(renders.transpose(0, 1))  # (T, K, 3, H, W)
        base_images.append(base)
        truths.append(truth)
        if protocol == "co3d":
            found = [co3d_mask(dataset, pair.index, t, p.mask_threshold) for t in pair.target]
            size = truth.shape[-1]
            masks += [
                m if m is not None else torch.zeros(size, size, dtype=torch.bool) for m in found
            ]
        if truth_json is not None and k >= 2:
            # Palette coverage of the hidden side at the diffusion target (synthetic worlds).
            if protocol == "co3d":
                candidates, hidden = palette_candidates(dataset, truth_json, pair.index, item)
            else:
                candidates, hidden = room_palette_candidates(dataset, truth_json, pair.index, item)
            if hidden.sum() >= 4:
                nearest, is_real, _ = classify_backs(
                    renders[:, 0], candidates, hidden, ev.palette_margin
                )
                assigned = torch.where(is_real, nearest, torch.full_like(nearest, -1))
                coverage.append(float(mode_coverage(assigned[None], len(candidates))[0]))
                real.append(float(is_real.float().mean()))
        folder = out_dir / "frames" / f"{number:04d}-{pair.name}"
        for c in range(item.context.images.shape[1]):
            _save_png(folder / f"context{c}.png", (item.context.images[0, c] + 1) / 2)
        for t in range(len(pair.target)):
            _save_png(folder / f"target{t}-truth.png", truth[t])
            _save_png(folder / f"target{t}-baseline.png", base[t])
            for j in range(k):
                _save_png(folder / f"target{t}-sample{j}.png", renders[j, t])
            if masks:
                _save_png(folder / f"target{t}-mask.png", masks[len(masks) - len(pair.target) + t])
        listed.append({**asdict(pair), "folder": str(folder.relative_to(out_dir))})
        if number < 8:
            row = [(item.context.images[0, 0] + 1) / 2, truth[0], base[0], *renders[:, 0]]
            rows.append(torch.stack(row))
    samples = torch.cat(dfm_images)  # (N, K, 3, H, W) over every target image
    truth_all = torch.cat(truths)
    mask_all = torch.stack(masks) if masks else None
    fid_path = p.fid_weights if p.fid else None
    dfm = score_images(
        samples, truth_all, masks=mask_all, lpips=lpips, fid_weights=fid_path,
        background=p.background,
    )  # fmt: skip
    base_scores = score_images(
        torch.cat(base_images)[:, None], truth_all, masks=mask_all, lpips=lpips,
        fid_weights=fid_path, background=p.background,
    )  # fmt: skip
    figures: dict[str, float | None] = {f"dfm_{key}": v for key, v in dfm.items()}
    figures |= {
        f"baseline_{key}": v
        for key, v in base_scores.items()
        if not key.startswith(("best_of_k", "diversity"))
    }
    figures["dfm_palette_coverage"] = float(np.mean(coverage)) if coverage else None
    figures["dfm_palette_real_colour"] = float(np.mean(real)) if real else None
    why = _reasons(p, k, mask_all is not None, truth_json is not None, len(truth_all))
    not_computed = {key: _reason(key, why) for key, v in figures.items() if v is None}
    counts = {"num_pairs": len(pairs), "num_target_images": len(truth_all), "num_samples": k}
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "protocol": protocol,
        "description": PROTOCOLS[protocol],
        "pairs_source": source,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "steps": {"dfm": trained.dfm_step, "baseline": trained.baseline_step},
        "sampler": {
            "name": ev.sampler, "steps": ev.steps, "guidance_scale": ev.guidance_scale,
            "temperature": ev.temperature, "seed": ev.seed,
        },
        "lpips_net": p.lpips_net if p.lpips else None,
        "ssim": "Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, population covariance",
        "frames": "metrics are computed on the written uint8 PNG frames",
        **counts,
        "metrics": figures,
        "not_computed": not_computed,
        "follows": FOLLOWS,
        "pairs": listed,
    }  # fmt: skip
    files = {
        "metrics": out_dir / "metrics.json",
        "metrics table": out_dir / "metrics.md",
        "pairs picture": out_dir / "pairs.png",
    }
    files["metrics"].write_text(json.dumps(record, indent=1))
    files["metrics table"].write_text(metrics_markdown(record))
    grid = media.image_grid(
        [img.permute(1, 2, 0).numpy() for row in rows for img in row],
        ncols=3 + k,
        captions=[
            c
            for _ in rows
            for c in ["context", "truth", "baseline", *[f"sample {j}" for j in range(k)]]
        ],
    )
    from PIL import Image

    Image.fromarray(grid).save(files["pairs picture"])
    scores = {key: float(v) for key, v in figures.items() if v is not None}
    scores |= {key: float(v) for key, v in counts.items()}
    return Evaluation(scores=scores, files=files)


_ROWS = [
    ("PSNR (dB)", "psnr", "full"),
    ("SSIM", "ssim", "full"),
    ("LPIPS", "lpips", "full"),
    ("FID", "fid", "full"),
    ("PSNR (dB)", "psnr", "masked"),
    ("SSIM", "ssim", "masked"),
    ("LPIPS", "lpips", "masked"),
    ("FID", "fid", "masked"),
    ("best-of-K PSNR (dB)", "best_of_k_psnr", "full"),
    ("best-of-K PSNR (dB)", "best_of_k_psnr", "masked"),
    ("diversity: mean pairwise RMSE", "diversity_rmse", None),
    ("diversity: mean pairwise LPIPS", "diversity_lpips", None),
    ("palette coverage of the hidden side", "palette_coverage", "hidden"),
    ("samples whose hidden side is a palette colour", "palette_real_colour", "hidden"),
]


def metric_rows(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metrics table (also used by the report)."""
    figures, missing = record["metrics"], record["not_computed"]

    def cell(key: str) -> str:
        if key not in figures:
            return ""
        value = figures[key]
        if value is None:
            return missing.get(key, "not computed")
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"

    rows = []
    for label, metric, region in _ROWS:
        key = f"{metric}_{region}" if region in ("full", "masked") else metric
        follows = region if metric in ("psnr", "ssim", "lpips", "fid") else "stochastic"
        if metric.startswith("lpips") and record.get("lpips_net"):
            label = f"{label} ({record['lpips_net'].upper()})"
        rows.append([label, region or "full", cell(f"dfm_{key}"), cell(f"baseline_{key}"), follows])
    return ["metric", "region", "DFM", "baseline", "protocol"], rows


def metrics_markdown(record: dict[str, Any]) -> str:
    """metrics.md: the figures as a markdown table, then what each protocol column means."""
    header, rows = metric_rows(record)
    lines = [
        f"# Protocol `{record['protocol']}`",
        "",
        f"Pairs: {record['pairs_source']}. {record['num_target_images']} target images, "
        f"K = {record['num_samples']} samples each; {record['ssim']}; {record['frames']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Protocols:", ""]
    lines += [f"- **{name}**: {text}" for name, text in record["follows"].items()]
    if record["num_target_images"] < 2048:
        lines += [
            "",
            f"FID over {record['num_target_images']} images is biased upwards (rank-deficient "
            "covariances): compare it only with FID over the same number of images.",
        ]
    return "\n".join(lines) + "\n"


def evaluate_protocol(
    config: Any, trained: Any, out_dir: Path, *, run_dir: Path | None = None, config_yaml: str = ""
) -> Any:
    """``evaluate`` of a real-data run: its format's protocol, then scores.json and report.html."""
    from dfm_apps import report

    out_dir = Path(out_dir)
    protocol = default_protocol(config)
    evaluation = run_protocol(config, trained, out_dir, protocol=protocol, run_dir=run_dir)
    record = json.loads(evaluation.files["metrics"].read_text())
    (out_dir / "scores.json").write_text(json.dumps(evaluation.scores, indent=1))
    evaluation.files["scores"] = out_dir / "scores.json"
    header, rows = metric_rows(record)
    html = report.render_page(
        title=f"DFM inverse graphics: {config.name} (protocol {protocol})",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the pixelNeRF baseline ({trained.baseline_step} "
            f"steps) on fixed pairs: {record['pairs_source']}. {config.evaluation.protocol.num_samples} "
            f"samples per pair, {config.evaluation.sampler} {config.evaluation.steps} steps. "
            + " ".join(f"{name}: {text}." for name, text in FOLLOWS.items())
        ),
        tables=[("metrics (metrics.json, metrics.md)", header, rows)],
        images={
            "context, truth, baseline, samples (first pairs)": evaluation.files["pairs picture"]
        },
        videos={},
        config_yaml=config_yaml,
        base=out_dir,
        commands=[f"dfm eval {run_dir} --protocol {protocol}"] if run_dir is not None else [],
    )
    (out_dir / "report.html").write_text(html)
    evaluation.files["report"] = out_dir / "report.html"
    return evaluation

"""Which context/target pairs an evaluation protocol scores (``dfm_apps.scene_protocols``).

Three sources, each a list of ``EvalPair`` (positions in the loader's frame order):

* ``eval_batch_pairs``: CO3D's ``eval_batches/eval_batches_<subset>.json``, ``[target,
  *sources]`` per batch;
* ``pixelsplat_index_pairs``: pixelSplat's RealEstate10k evaluation index;
* ``seeded_pairs``: the documented seeded choice when neither file is used (one pair per
  sequence: a gap uniform in ``[min_gap, max_gap]``, then a context position; the pair of
  sequence ``i`` draws from ``numpy.random.default_rng([pair_seed, i])``, so it does not
  depend on how many pairs are asked for).

``choose_pairs`` picks the source a protocol's config asks for and says which in one sentence
(written into metrics.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EVAL_BATCHES_SUBSET",
    "EvalPair",
    "choose_pairs",
    "eval_batch_pairs",
    "pixelsplat_index_pairs",
    "seeded_pairs",
]

EVAL_BATCHES_SUBSET = "fewview_dev"
"""CO3D subset whose ``eval_batches_<subset>.json`` is read (the subset the loader reads)."""


@dataclass(frozen=True)
class EvalPair:
    """One scored pair: context and target frame positions of one sequence/clip.

    Positions index the loader's frame list of that sequence (CO3D: the split's frames in
    ``frame_number`` order; RealEstate10k: timestamp order). ``target[0]`` is denoised.
    """

    index: int
    """Dataset index of the sequence/clip."""
    name: str
    """Sequence name / clip id."""
    context: tuple[int, ...]
    target: tuple[int, ...]


def seeded_pairs(
    names: list[str], lengths: list[int], *, num_pairs: int, seed: int, min_gap: int, max_gap: int
) -> list[EvalPair]:
    """The documented seeded choice (module docstring): one pair per sequence, in order.

    Args:
        names: sequence names in dataset order.
        lengths: frames of each sequence (sequences with fewer than 2 are skipped).
        num_pairs: most pairs.
        seed: ``pair_seed``.
        min_gap, max_gap: range of the context-target gap in frames.
    """
    pairs = []
    for index, (name, n) in enumerate(zip(names, lengths, strict=True)):
        if len(pairs) == num_pairs:
            break
        if n < 2:
            continue
        rng = np.random.default_rng([seed, index])
        gap = min(int(rng.integers(min_gap, max_gap + 1)), n - 1)
        start = int(rng.integers(0, n - gap))
        pairs.append(EvalPair(index, name, (start,), (start + gap,)))
    return pairs


def _entry(value: Any, path: Path, where: str) -> tuple[str, int, str]:
    if not (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and isinstance(value[2], str)
    ):
        raise ValueError(f"{path}: {where}: expected [sequence_name, frame_number, image_path]")
    return value[0], value[1], value[2]


def eval_batch_pairs(
    dataset: Any, path: Path, *, num_pairs: int, num_context: int
) -> tuple[list[EvalPair], int]:
    """Pairs from a CO3D ``eval_batches_<subset>.json``: ``[target, *sources]`` per batch.

    Batches whose frames are not all in one loaded sequence of the split are skipped.

    Args:
        dataset: the ``CO3DDataset`` of the evaluated split.
        path: the eval_batches file.
        num_pairs: most pairs (the first batches of the file).
        num_context: most source views used as context.

    Returns:
        The pairs and the number of batches skipped.

    Raises:
        ValueError: the file is not a list of batches of CO3D entries (names file and batch).
    """
    try:
        batches = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(batches, list):
        raise ValueError(f"{path}: expected a list of eval batches")
    index_of = {name: i for i, (_, name) in enumerate(dataset.sequences)}
    positions = {
        name: {frame.image_path: i for i, frame in enumerate(frames)}
        for name, frames in dataset.frames.items()
    }
    pairs, skipped = [], 0
    for b, batch in enumerate(batches):
        if len(pairs) == num_pairs:
            break
        if not isinstance(batch, list) or len(batch) < 2:
            raise ValueError(f"{path}: batch {b}: expected [target, source, ...]")
        entries = [_entry(e, path, f"batch {b} entry {i}") for i, e in enumerate(batch)]
        names = {name for name, _, _ in entries}
        name = entries[0][0]
        if len(names) != 1 or name not in index_of:
            skipped += 1
            continue
        found = [positions[name].get(image) for _, _, image in entries]
        if any(f is None for f in found):
            skipped += 1
            continue
        pairs.append(EvalPair(index_of[name], name, tuple(found[1 : 1 + num_context]), (found[0],)))
    return pairs, skipped


def pixelsplat_index_pairs(
    clips: list[str], lengths: list[int], path: Path, *, num_pairs: int, num_context: int
) -> tuple[list[EvalPair], int]:
    """Pairs from pixelSplat's evaluation index, its clips in sorted order.

    Args:
        clips: clip ids of the loaded split, in dataset order.
        lengths: frames of each clip.
        path: ``{clip: {"context": [i, ...], "target": [k, ...]} | null}``.
        num_pairs: most pairs.
        num_context: most context positions used (the first ones).

    Returns:
        The pairs, and the number of indexed clips skipped (not loaded, or a position outside
        the clip); ``null`` entries are the index's own exclusions and not counted.

    Raises:
        ValueError: malformed file (names file and clip).
    """
    try:
        index = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected an object clip -> {{context, target}} or null")
    where = {clip: i for i, clip in enumerate(clips)}
    pairs, skipped = [], 0
    for clip in sorted(index):
        if len(pairs) == num_pairs:
            break
        entry = index[clip]
        if entry is None:
            continue
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), list)
            and entry[k]
            and all(isinstance(i, int) for i in entry[k])
            for k in ("context", "target")
        )
        if not ok:
            raise ValueError(
                f"{path}: {clip}: expected {{'context': [int, ...], 'target': [int, ...]}}"
            )
        i = where.get(clip)
        if i is None or max(entry["context"] + entry["target"]) >= lengths[i]:
            skipped += 1
            continue
        context = tuple(entry["context"][:num_context])
        pairs.append(EvalPair(i, clip, context, tuple(entry["target"])))
    return pairs, skipped


def _num_context(config: Any) -> int:
    return min(config.evaluation.protocol.num_context, config.model.num_context)


def choose_pairs(config: Any, protocol: str, dataset: Any) -> tuple[list[EvalPair], str]:
    """The pairs of a protocol and one sentence saying where they come from."""
    p = config.evaluation.protocol
    data = config.data
    if protocol == "co3d":
        names = [name for _, name in dataset.sequences]
        lengths = [len(dataset.frames[name]) for name in names]
        files = [
            Path(data.root) / c / "eval_batches" / f"eval_batches_{EVAL_BATCHES_SUBSET}.json"
            for c in data.categories
        ]
        present = [f for f in files if f.is_file()]
        if p.eval_batches and present:
            pairs, skipped = [], 0
            for f in present:
                more, n = eval_batch_pairs(
                    dataset,
                    f,
                    num_pairs=p.num_pairs - len(pairs),
                    num_context=_num_context(config),
                )
                pairs += more
                skipped += n
            source = (
                f"CO3D eval batches ({', '.join(str(f) for f in present)}), split {p.split!r}: "
                f"{len(pairs)} pairs, {skipped} batches outside the split skipped"
            )
            return pairs, source
        why = "switched off" if not p.eval_batches else "no eval_batches file"
    else:
        names = list(dataset.clips)
        lengths = [len(dataset._frames[clip]) for clip in names]
        if p.index_file is not None:
            path = Path(p.index_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"evaluation.protocol.index_file: {path} does not exist (pixelSplat's "
                    "assets/evaluation_index_re10k.json, or null for seeded pairs)"
                )
            pairs, skipped = pixelsplat_index_pairs(
                names, lengths, path, num_pairs=p.num_pairs, num_context=_num_context(config)
            )
            source = (
                f"pixelSplat evaluation index {path}, split {p.split!r}: {len(pairs)} pairs, "
                f"{skipped} indexed clips not loaded or too short skipped"
            )
            return pairs, source
        why = "no evaluation index given"
    pairs = seeded_pairs(
        names, lengths, num_pairs=p.num_pairs, seed=p.pair_seed,
        min_gap=data.min_gap, max_gap=data.max_gap,
    )  # fmt: skip
    source = (
        f"seeded choice ({why}): split {p.split!r}, pair_seed {p.pair_seed}, gaps "
        f"{data.min_gap}-{data.max_gap} frames, {len(pairs)} pairs"
    )
    return pairs, source

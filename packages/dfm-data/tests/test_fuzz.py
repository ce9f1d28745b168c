"""Fuzzing the annotation and pose parsers: every input is accepted or raises a DatasetError.

The default suite runs a few hundred examples per parser; ``pytest -m slow -s`` runs many more and
prints how many inputs were tried (figures recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfm_data.cameras import look_at, opencv_to_pytorch3d
from dfm_data.co3d import load_jgz, parse_frame_annotation, parse_sequence_annotation
from dfm_data.errors import DatasetError
from dfm_data.realestate10k import parse_camera_row, parse_camera_txt
from dfm_data.vimeo90k import parse_clip_list

TALLY: Counter = Counter()

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _valid_frame() -> dict:
    c2w = look_at(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    K = np.array([[30.0, 0, 16], [0, 30, 12], [0, 0, 1]])
    return {
        "sequence_name": "1_2_3",
        "frame_number": 0,
        "frame_timestamp": 0.0,
        "image": {"path": "c/1_2_3/images/frame000001.jpg", "size": [24, 32]},
        "depth": {"path": "c/d.png", "scale_adjustment": 1.0},
        "mask": {"path": "c/m.png"},
        "viewpoint": opencv_to_pytorch3d(c2w, K, (24, 32)),
    }


def _paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


FRAME_PATHS = list(_paths(_valid_frame()))


@st.composite
def mutated_frames(draw):
    rec = _valid_frame()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(FRAME_PATHS))
        node = rec
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                break
            node = node[k]
        else:
            if draw(st.booleans()):
                node[path[-1]] = draw(json_values)
            else:
                node.pop(path[-1], None)
    # Numeric perturbations of the camera (NaN, inf, huge, degenerate).
    if (
        draw(st.booleans())
        and isinstance(rec.get("viewpoint"), dict)
        and isinstance(rec["viewpoint"].get("R"), list)
    ):
        R = rec["viewpoint"]["R"]
        i, j = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        if i < len(R) and isinstance(R[i], list) and j < len(R[i]):
            R[i][j] = draw(st.floats())
    return rec


def _expect_typed(fn, *args, **kw):
    TALLY["tried"] += 1
    try:
        fn(*args, **kw)
        TALLY["accepted"] += 1
    except DatasetError:
        TALLY["typed errors"] += 1


def _check_frame(rec):
    _expect_typed(parse_frame_annotation, rec, source="fuzz.jgz", index=0)


def _check_sequence(rec):
    _expect_typed(parse_sequence_annotation, rec, source="fuzz.jgz", index=0)


def _valid_txt_row() -> list[str]:
    c2w = look_at(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    w2c = np.linalg.inv(c2w)[:3].reshape(-1)
    return ["123456", "0.9", "1.6", "0.5", "0.5", "0", "0", *[repr(float(v)) for v in w2c]]


@st.composite
def mutated_txt(draw):
    lines = ["https://www.youtube.com/watch?v=abc"]
    for _ in range(draw(st.integers(0, 3))):
        row = _valid_txt_row()
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, 18))
            row[i] = draw(
                st.sampled_from(["nan", "inf", "-inf", "1e308", "0", "x", "", "1.5", "-3"])
                | st.text(max_size=5)
            )
        if draw(st.booleans()):
            row = row[: draw(st.integers(0, 19))]
        lines.append(" ".join(row))
    return "\n".join(lines)


def _check_txt(text):
    def run():
        _, rows = parse_camera_txt(text, source="fuzz.txt")
        for ts, row in rows:
            parse_camera_row(row, source="fuzz.txt", field=str(ts))

    _expect_typed(run)


def _check_jgz_bytes(data: bytes, wrap: bool):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.jgz"
        p.write_bytes(gzip.compress(data) if wrap else data)

        def run():
            for i, rec in enumerate(load_jgz(p)):
                parse_frame_annotation(rec, source=p, index=i)

        _expect_typed(run)


FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FAST
@given(st.one_of(json_values, mutated_frames()))
def test_frame_annotation_parser(rec):
    _check_frame(rec)


@FAST
@given(json_values)
def test_sequence_annotation_parser(rec):
    _check_sequence(rec)


@FAST
@given(st.one_of(st.text(max_size=200), mutated_txt()))
def test_camera_txt_parser(text):
    _check_txt(text)


@FAST
@given(st.lists(st.floats() | st.integers(-(2**70), 2**70), max_size=20) | json_values)
def test_camera_row_parser(values):
    _expect_typed(parse_camera_row, values, source="fuzz", field="row")


@FAST
@given(st.text(max_size=100))
def test_clip_list_parser(text):
    _expect_typed(parse_clip_list, text, source="fuzz.txt")


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated_frames().map(lambda r: json.dumps([r]).encode()),
    ),
    st.booleans(),
)
def test_jgz_reader(data, wrap):
    _check_jgz_bytes(data, wrap)


@pytest.mark.slow
def test_long_fuzz_run():
    """Many more examples per parser; prints the tally (``pytest -m slow -s``)."""
    TALLY.clear()
    long = settings(
        max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    given(st.one_of(json_values, mutated_frames()))(long(_check_frame))()
    given(json_values)(long(_check_sequence))()
    given(st.one_of(st.text(max_size=200), mutated_txt()))(long(_check_txt))()
    given(st.lists(st.floats() | st.integers(-(2**70), 2**70), max_size=20) | json_values)(
        long(lambda v: _expect_typed(parse_camera_row, v, source="fuzz", field="row"))
    )()
    given(st.text(max_size=100))(long(lambda t: _expect_typed(parse_clip_list, t, source="fuzz")))()
    given(
        st.binary(max_size=64) | mutated_frames().map(lambda r: json.dumps([r]).encode()),
        st.booleans(),
    )(settings(max_examples=1000, deadline=None, database=None)(_check_jgz_bytes))()
    print(f"\nfuzz tally: {dict(TALLY)} (crashes outside DatasetError: 0)")
    assert TALLY["tried"] > 20000

"""The latent replay memory: codecs, byte budget, AR1* and class-balanced policies, state."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_cl.errors import CheckpointError, FrameError, LabelError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import PretrainedHead
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.replay import (
    CODECS,
    POLICIES,
    Codec,
    ReplayMemory,
    pack_uint4,
    quantize,
    unpack_uint4,
)

LEVELS = {"uint8": 256, "uint4": 16}


def tagged(ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Patterns whose channel c holds ``id + c / 4`` everywhere: every codec stores them exactly
    (constant channels, float16-exact values), so a decoded pattern tells which one it is."""
    channels = shape[-1] if len(shape) > 1 else 1
    offsets = np.arange(channels, dtype=np.float32) / 4
    x = np.asarray(ids, np.float32)[:, None] + offsets
    if len(shape) == 1:
        return np.repeat(x, shape[0], axis=1)
    return np.broadcast_to(x[:, None, :], (len(x), np.prod(shape[:-1]), channels)).reshape(
        len(x), *shape
    )


def ids_of(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), int(np.prod(x.shape[1:])))[:, 0].astype(np.int64)


def uniform_memory(capacity: int, seed: int = 0) -> ReplayMemory:
    """A float32 memory of (2,) patterns (12 bytes each) with ``capacity`` slots."""
    return ReplayMemory(capacity * 12 + 11, "float32", seed=seed)


# ----------------------------------------------------------------------------------- codecs
def awkward_latents(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Channels of very different ranges and offsets, plus constant ones (0, 2.5, 0.1, -1000.3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, *shape)).astype(np.float32)
    channels = shape[-1]
    x *= np.logspace(-3, 3, channels, dtype=np.float32)
    x += rng.uniform(-50, 50, channels).astype(np.float32)
    if len(shape) > 1 and channels >= 4:
        for c, value in enumerate((0.0, 2.5, 0.1, -1000.3)):
            x[..., c] = value
    return x


@pytest.mark.parametrize("shape", [(4, 4, 320), (3, 5, 7), (2, 1, 9), (9,), (1280,)])
@pytest.mark.parametrize("codec", ["uint8", "uint4"])
def test_quantised_error_is_at_most_half_a_step_per_channel(
    codec: str, shape: tuple[int, ...]
) -> None:
    x = awkward_latents(shape)
    q, lo, scale = quantize(x, LEVELS[codec])
    assert q.shape == x.shape and q.max() < LEVELS[codec]
    channels = shape[-1] if len(shape) > 1 else 1
    assert lo.dtype == scale.dtype == np.float16 and lo.shape == scale.shape == (6, channels)
    c = Codec(codec, shape)
    fields = c.encode(x)
    assert np.array_equal(fields["lo"], lo) and np.array_equal(fields["scale"], scale)
    decoded = c.decode(fields)
    assert decoded.dtype == np.float32 and decoded.shape == x.shape
    n = len(x)
    err = np.abs(decoded - x).reshape(n, -1, channels).max(axis=1)
    magnitude = np.abs(x).reshape(n, -1, channels).max(axis=1)
    bound = scale.astype(np.float32) / 2 + 1e-6 * magnitude
    assert (err <= bound).all(), float((err - bound).max())
    # the stored minimum and step are the tightest float16 ones covering each channel's range,
    # so the error is as small as the levels allow (not a loose bound, not a float copy)
    low = x.reshape(n, -1, channels).min(1)
    span = x.reshape(n, -1, channels).max(1) - lo.astype(np.float32)
    steps = scale.astype(np.float32) * (LEVELS[codec] - 1)
    assert (lo.astype(np.float32) <= low).all()
    assert (steps >= span * (1 - 1e-6)).all()
    assert (steps <= span * (1 + 2e-3) + 6e-8 * (LEVELS[codec] - 1)).all()


def test_constant_channels_get_scale_zero_and_decode_exactly() -> None:
    x = np.zeros((2, 3, 3, 4), np.float32)
    x[..., 0] = 0.0
    x[..., 1] = 2.5
    x[..., 2] = -7.0
    x[..., 3] = np.linspace(0, 1, 9, dtype=np.float32).reshape(3, 3)
    for codec in ("uint8", "uint4"):
        fields = Codec(codec, x.shape[1:]).encode(x)
        assert (fields["scale"][:, :3] == 0).all() and (fields["scale"][:, 3] > 0).all()
        decoded = Codec(codec, x.shape[1:]).decode(fields)
        assert np.array_equal(decoded[..., :3], x[..., :3])
    # a constant that float16 cannot hold still decodes within half of its (tiny) step
    y = np.full((1, 2, 2, 1), 0.1, np.float32)
    fields = Codec("uint8", (2, 2, 1)).encode(y)
    err = np.abs(Codec("uint8", (2, 2, 1)).decode(fields) - y).max()
    assert 0 < float(fields["scale"][0, 0]) < 1e-6 and err <= float(fields["scale"][0, 0]) / 2


def test_float32_codec_is_exact_and_decodes_selected_rows() -> None:
    x = awkward_latents((3, 5, 7))
    codec = Codec("float32", (3, 5, 7))
    fields = codec.encode(x)
    assert np.array_equal(codec.decode(fields), x)
    rows = np.array([4, 0, 4])
    out = np.empty((3, 3, 5, 7), np.float32)
    assert codec.decode(fields, rows=rows, out=out) is out
    assert np.array_equal(out, x[rows])
    assert codec.bytes_per_pattern == 4 * 105
    uint8 = Codec("uint8", (3, 5, 7))
    assert np.array_equal(
        uint8.decode(uint8.encode(x), rows=rows), uint8.decode(uint8.encode(x))[rows]
    )


@given(
    n=st.integers(0, 4),
    size=st.integers(1, 33),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_uint4_packing_round_trips_odd_and_even_sizes(n: int, size: int, seed: int) -> None:
    q = np.random.default_rng(seed).integers(0, 16, (n, size), dtype=np.uint8)
    packed = pack_uint4(q)
    assert packed.shape == (n, (size + 1) // 2) and packed.dtype == np.uint8
    assert np.array_equal(unpack_uint4(packed, size), q)


def test_uint4_stores_odd_element_counts_in_half_bytes() -> None:
    codec = Codec("uint4", (3, 5, 7))  # 105 codes -> 53 bytes, 7 channels of float16 min + step
    assert codec.fields["data"][0] == (53,)
    assert codec.bytes_per_pattern == 53 + 7 * 2 * 2
    assert Codec("uint4", (9,)).bytes_per_pattern == 5 + 2 + 2  # 1-D: one channel


def test_values_beyond_float16_need_the_float32_codec() -> None:
    x = np.full((1, 2, 2), 1e6, np.float32) + np.arange(4, dtype=np.float32).reshape(1, 2, 2) / 8
    with pytest.raises(ValueError, match="float16"):
        Codec("uint8", (2, 2)).encode(x)
    assert np.array_equal(Codec("float32", (2, 2)).decode(Codec("float32", (2, 2)).encode(x)), x)


# ------------------------------------------------------------------------------ byte budget
@pytest.mark.parametrize(
    ("shape", "sizes"),
    [
        ((4, 4, 320), {"float32": 20484, "uint8": 6404, "uint4": 3844}),
        ((1280,), {"float32": 5124, "uint8": 1288, "uint4": 648}),
    ],
)
def test_bytes_per_pattern_count_payload_ranges_and_label(
    shape: tuple[int, ...], sizes: dict[str, int]
) -> None:
    for codec, size in sizes.items():
        memory = ReplayMemory(8 << 20, codec)
        assert memory.capacity == 0 and memory.nbytes == 0 and memory.shape is None
        memory.add(np.zeros((1, *shape), np.float32), np.zeros(1, np.int64), 0)
        assert memory.bytes_per_pattern == size
        assert memory.capacity == (8 << 20) // size
        assert memory.nbytes == memory.capacity * size <= 8 << 20
        assert memory.shape == shape


batches = st.lists(
    st.tuples(st.lists(st.integers(0, 5), max_size=30), st.none() | st.integers(0, 5)),
    min_size=1,
    max_size=10,
)


@given(
    codec=st.sampled_from(CODECS),
    policy=st.sampled_from(POLICIES),
    slots=st.integers(1, 40),
    slack=st.integers(0, 200),
    stream=batches,
)
@settings(max_examples=80, deadline=None)
def test_memory_never_exceeds_its_budget_and_keeps_labels_with_patterns(
    codec: str, policy: str, slots: int, slack: int, stream: list[tuple[list[int], int | None]]
) -> None:
    shape = (3, 5)
    per_pattern = Codec(codec, shape).bytes_per_pattern + 4
    max_bytes = slots * per_pattern + slack
    memory = ReplayMemory(max_bytes, codec, policy, seed=slots)
    label_of: dict[int, int] = {}
    next_id = 0
    for batch_index, (labels, forget) in enumerate(stream):
        ids = np.arange(next_id, next_id + len(labels))
        next_id += len(labels)
        label_of.update(zip(ids.tolist(), labels, strict=True))
        memory.add(tagged(ids, shape), np.asarray(labels, np.int64), batch_index)
        if forget is not None:
            before = memory.counts().get(forget, 0)
            assert memory.forget(forget) == before
            assert forget not in memory.counts()
        assert memory.capacity == max_bytes // per_pattern
        assert memory.nbytes == memory.capacity * per_pattern
        assert memory.nbytes <= max_bytes < memory.nbytes + per_pattern
        assert len(memory) <= memory.capacity
        assert sum(memory.counts().values()) == len(memory)
        x, y = memory.all()
        stored = ids_of(x)
        assert len(set(stored.tolist())) == len(stored)  # no pattern stored twice
        assert [label_of[i] for i in stored.tolist()] == y.tolist()
        assert np.array_equal(x, tagged(stored, shape))
        if len(memory) == memory.capacity:
            state = memory.state_dict()
            measured = sum(a.nbytes for a in state.values() if isinstance(a, np.ndarray))
            assert measured - state["shape"].nbytes == memory.nbytes  # type: ignore[union-attr]


def test_allocation_is_measured_and_does_not_grow() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4, 4, 320)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        memory = ReplayMemory(1 << 20, "uint8", "class_balanced")
        memory.add(x, y, 0)
        first = tracemalloc.get_traced_memory()[0] - baseline
        for batch_index in range(1, 40):
            memory.add(x, y, batch_index)
            memory.sample(16)
        last = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert memory.nbytes <= first < memory.nbytes + (64 << 10)
    assert last - first < 64 << 10
    assert len(memory) == memory.capacity == (1 << 20) // 6404


# ----------------------------------------------------------------------------- policies
def test_uniform_policy_follows_the_ar1_rule_on_a_worked_example() -> None:
    memory = uniform_memory(10)
    memory.add(tagged(np.arange(8), (2,)), np.zeros(8, np.int64), 0)
    assert memory.capacity == 10 and len(memory) == 8 and memory.counts() == {0: 8}
    # batch 1: h = min(10 // 2, 8) = 5; 2 go to the free slots, 3 overwrite batch-0 patterns
    memory.add(tagged(np.arange(100, 108), (2,)), np.ones(8, np.int64), 1)
    assert len(memory) == 10 and memory.counts() == {0: 5, 1: 5}
    # batch 2: h = min(10 // 3, 8) = 3 random old ones replaced
    memory.add(tagged(np.arange(200, 208), (2,)), np.full(8, 2), 2)
    counts = memory.counts()
    assert counts[2] == 3 and counts[0] + counts[1] == 7 and counts[0] <= 5 and counts[1] <= 5
    # batch 3: h = min(10 // 4, 8) = 2
    memory.add(tagged(np.arange(300, 308), (2,)), np.full(8, 3), 3)
    assert memory.counts()[3] == 2 and len(memory) == 10
    x, y = memory.all()
    assert np.array_equal(ids_of(x) // 100, y)  # every label still sits with its pattern
    # batch 10: h = 10 // 11 = 0, nothing changes
    memory.add(tagged(np.arange(1000, 1008), (2,)), np.full(8, 10), 10)
    assert np.array_equal(memory.all()[0], x)


def test_uniform_policy_takes_fewer_when_the_batch_is_small() -> None:
    memory = uniform_memory(10)
    memory.add(tagged(np.arange(3), (2,)), np.zeros(3, np.int64), 0)
    memory.add(tagged(np.arange(3, 6), (2,)), np.ones(3, np.int64), 1)  # h = min(5, 3)
    assert len(memory) == 6 and memory.counts() == {0: 3, 1: 3}
    memory.add(tagged(np.arange(6, 26), (2,)), np.full(20, 2), 2)  # h = 3, all into free slots
    assert memory.counts() == {0: 3, 1: 3, 2: 3}
    assert sorted(ids_of(memory.all()[0]).tolist())[:6] == list(range(6))


def test_class_balanced_counts_stay_within_one_once_full() -> None:
    rng = np.random.default_rng(3)
    memory = ReplayMemory(30 * 12 + 11, "float32", "class_balanced")  # (2,) float32: 12 bytes
    first_id = 0
    for batch_index, classes in enumerate([(0, 1), (2, 3), (4, 5), (1, 6), (7, 8), (0, 9)]):
        labels = np.repeat(classes, 10)
        rng.shuffle(labels)
        memory.add(tagged(np.arange(first_id, first_id + 20), (2,)), labels, batch_index)
        first_id += 20
        counts = memory.counts()
        if batch_index == 0:
            assert counts == {0: 10, 1: 10}
            continue
        assert len(memory) == memory.capacity == 30
        assert sorted(counts) == list(range(max(counts) + 1))  # no seen class evicted
        assert max(counts.values()) - min(counts.values()) <= 1
    assert len(memory.counts()) == 10 and set(memory.counts().values()) == {3}


def test_class_balanced_leaves_a_small_class_whole_and_gives_its_share_to_others() -> None:
    memory = ReplayMemory(10 * 12, "float32", "class_balanced")
    memory.add(tagged(np.arange(32), (2,)), np.array([0] * 2 + [1] * 30), 0)
    assert memory.counts() == {0: 2, 1: 8}
    memory.add(tagged(np.arange(32, 62), (2,)), np.full(30, 2), 1)
    assert memory.counts() == {0: 2, 1: 4, 2: 4}
    for batch_index in (2, 3, 4):  # class 1 comes back: new views replace some stored ones
        start = 62 + 100 * (batch_index - 2)
        memory.add(tagged(np.arange(start, start + 100), (2,)), np.full(100, 1), batch_index)
        assert memory.counts() == {0: 2, 1: 4, 2: 4}
    x, y = memory.all()
    assert (ids_of(x)[y == 1] >= 62).any() and (ids_of(x)[y != 1] < 62).all()


@pytest.mark.parametrize("policy", POLICIES)
def test_forget_removes_a_class_and_frees_its_slots(policy: str) -> None:
    memory = ReplayMemory(20 * 12, "float32", policy)
    memory.add(tagged(np.arange(30), (2,)), np.arange(30) % 3, 0)
    assert len(memory) == 20
    before_x, before_y = memory.all()
    kept = set(ids_of(before_x)[before_y != 1].tolist())
    removed = memory.forget(1)
    assert removed == int((before_y == 1).sum()) > 0
    x, y = memory.all()
    assert 1 not in y and set(ids_of(x).tolist()) == kept and len(memory) == 20 - removed
    assert memory.capacity == 20 and memory.nbytes == 20 * 12
    assert memory.forget(1) == 0 and memory.forget(99) == 0
    # freed slots are filled before anything is overwritten
    memory.add(tagged(np.arange(100, 100 + removed), (2,)), np.full(removed, 5), 0)
    x, _ = memory.all()
    assert len(memory) == 20 and kept <= set(ids_of(x).tolist())


# --------------------------------------------------------------------------- reading
def test_sample_is_without_replacement_up_to_len_then_with() -> None:
    memory = uniform_memory(12, seed=4)
    memory.add(tagged(np.arange(12), (2,)), np.arange(12) % 4, 0)
    x, y = memory.sample(12)
    assert sorted(ids_of(x).tolist()) == list(range(12))
    assert np.array_equal(ids_of(x) % 4, y)
    x, y = memory.sample(40)
    assert x.shape == (40, 2) and set(ids_of(x).tolist()) <= set(range(12))
    assert np.array_equal(ids_of(x) % 4, y)
    assert memory.sample(0)[0].shape == (0, 2)
    out = np.empty((3, 2), np.float32)
    assert memory.decode_into([2, 0, 2], out) is out
    assert np.array_equal(out, memory.get([2, 0, 2])[0])


# ------------------------------------------------------------------------------- state
def through_checkpoint(state: dict[str, np.ndarray | int | str]) -> dict[str, object]:
    """What a checkpoint gives back: scalars through JSON, arrays through raw bytes."""
    meta = json.loads(json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)}))
    arrays = {
        k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape).copy()
        for k, v in state.items()
        if isinstance(v, np.ndarray)
    }
    return {**meta, **arrays}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("codec", CODECS)
def test_state_round_trip_continues_bit_identically(codec: str, policy: str) -> None:
    rng = np.random.default_rng(7)
    memory = ReplayMemory(4000, codec, policy, seed=11)  # 27, 52 or 68 slots: full by batch 3
    batches = [
        (rng.normal(size=(25, 2, 2, 9)).astype(np.float32), rng.integers(0, 4, 25))
        for _ in range(6)
    ]
    for i, (x, y) in enumerate(batches[:4]):
        memory.add(x, y, i)
    memory.sample(5)
    loaded = ReplayMemory.from_state_dict(through_checkpoint(memory.state_dict()))
    assert loaded.footprint() == memory.footprint()
    for a, b in ((memory.sample(9), loaded.sample(9)), (memory.all(), loaded.all())):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for i, (x, y) in enumerate(batches[4:], start=4):
        memory.add(x, y, i)
        loaded.add(x, y, i)
    for a, b in ((memory.all(), loaded.all()), (memory.sample(30), loaded.sample(30))):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_state_of_an_empty_memory_round_trips() -> None:
    memory = ReplayMemory(5000, "uint4", "class_balanced", seed=3)
    loaded = ReplayMemory.from_state_dict(through_checkpoint(memory.state_dict()))
    assert loaded.shape is None and len(loaded) == 0 and loaded.policy == "class_balanced"
    x = np.random.default_rng(0).random((9, 3, 3), dtype=np.float32)
    memory.add(x, np.arange(9), 0)
    loaded.add(x, np.arange(9), 0)
    assert np.array_equal(memory.all()[0], loaded.all()[0])


def broken(change: str, state: dict[str, object]) -> dict[str, object]:
    state = dict(state)
    if change == "missing labels":
        del state["labels"]
    elif change == "float64 data":
        state["data"] = np.asarray(state["data"], np.float64)
    elif change == "short labels":
        state["labels"] = np.asarray(state["labels"])[:-1]
    elif change == "budget too small":
        state["max_bytes"] = 3 * 28
    elif change == "bad rng":
        state["rng"] = "{not json"
    elif change == "future version":
        state["version"] = 2
    elif change == "unknown codec":
        state["codec"] = "zip"
    elif change == "nan data":
        data = np.array(state["data"])
        data[0, 0] = np.nan
        state["data"] = data
    elif change == "size without shape":
        state["shape"] = np.zeros(0, np.int64)
    elif change == "size as text":
        state["size"] = "5"
    elif change == "bad grid":
        state["grid"] = "[-0.5, 3]"
    return state


@pytest.mark.parametrize(
    "change",
    [
        "missing labels",
        "float64 data",
        "short labels",
        "budget too small",
        "bad rng",
        "future version",
        "unknown codec",
        "nan data",
        "size without shape",
        "size as text",
        "bad grid",
    ],
)
def test_inconsistent_state_is_refused(change: str) -> None:
    memory = ReplayMemory(10 * 28, "float32")  # (6,) float32 + label: 28 bytes, 10 slots
    memory.add(np.ones((8, 6), np.float32), np.zeros(8, np.int64), 0)
    state = through_checkpoint(memory.state_dict())
    ReplayMemory.from_state_dict(state)
    with pytest.raises(CheckpointError, match="replay state"):
        ReplayMemory.from_state_dict(broken(change, state))


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_changes_nothing() -> None:
    memory = ReplayMemory(10_000, "uint8")
    memory.add(np.ones((4, 2, 2, 8), np.float32), np.arange(4), 0)
    before = memory.state_dict()
    nan = np.ones((2, 2, 2, 8), np.float32)
    nan[1, 0, 0, 0] = np.nan
    cases: list[tuple[object, object, int, type[Exception], str]] = [
        (np.ones((2, 2, 2, 9), np.float32), [0, 1], 1, FrameError, "pattern shape"),
        (np.ones((2, 8), np.float32), [0, 1], 1, FrameError, "pattern shape"),
        (np.ones(8, np.float32), [0], 1, FrameError, "shape"),
        (nan, [0, 1], 1, FrameError, "NaN"),
        (np.full((2, 2, 2, 8), np.inf, np.float32), [0, 1], 1, FrameError, "NaN"),
        (np.ones((2, 2, 2, 8), np.complex64), [0, 1], 1, FrameError, "real"),
        (np.ones((3, 2, 2, 8), np.float32), [0, 1], 1, LabelError, "3 latents"),
        (np.ones((2, 2, 2, 8), np.float32), [0.0, 1.5], 1, LabelError, "integer"),
        (np.ones((2, 2, 2, 8), np.float32), [0, -1], 1, LabelError, "class indices"),
        (np.ones((2, 2, 2, 8), np.float32), [0, 1], -1, ValueError, "batch_index"),
        (np.full((2, 2, 2, 8), 1e9, np.float32), [0, 1], 1, FrameError, "float16"),
    ]
    for x, y, batch_index, error, match in cases:
        with pytest.raises(error, match=match):
            memory.add(x, y, batch_index)  # type: ignore[arg-type]
    after = memory.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert (
            np.array_equal(value, after[key])
            if isinstance(value, np.ndarray)
            else (value == after[key])
        )
    with pytest.raises(ValueError, match="indices"):
        memory.get([4])
    with pytest.raises(ValueError, match="out must be"):
        memory.decode_into([0], np.empty((1, 2, 2, 8), np.float64))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        ReplayMemory(1000, "int3")
    with pytest.raises(ValueError, match="unknown policy"):
        ReplayMemory(1000, "uint8", "fifo")
    with pytest.raises(ValueError, match="max_bytes"):
        ReplayMemory(0)
    with pytest.raises(TypeError, match="max_bytes"):
        ReplayMemory(8.0)  # type: ignore[arg-type]
    memory = ReplayMemory(6000, "uint8")
    with pytest.raises(ValueError, match="holds no pattern"):
        memory.add(np.zeros((1, 4, 4, 320), np.float32), [0], 0)
    assert memory.shape is None and memory.capacity == 0  # still free to take another shape
    with pytest.raises(ValueError, match="empty"):
        memory.sample(1)
    memory.add(np.zeros((1, 1280), np.float32), np.zeros(1, np.int64), 0)
    assert memory.shape == (1280,)
    with pytest.raises(LabelError):
        memory.forget("cup")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ grids
GRID = (0.25, 128)
INT8_GRID = (0.14608371257781982, 131)  # the int8 latent models' output grid (manifest)


def on_grid(codes: np.ndarray, grid: tuple[float, int]) -> np.ndarray:
    """The float32 values an int8 model outputs for uint8 ``codes`` on ``grid``."""
    return ((codes.astype(np.float32) - grid[1]) * np.float32(grid[0])).astype(np.float32)


def rows(a: np.ndarray) -> list[bytes]:
    """The patterns of ``a`` as sorted bytes: equal when the same patterns in any order."""
    return sorted(r.tobytes() for r in a)


def test_grid_codec_stores_codes_alone_and_decodes_on_grid_values_exactly() -> None:
    codec = Codec("uint8", (2, 2, 3), grid=GRID)
    assert codec.bytes_per_pattern == 12 and list(codec.fields) == ["data"]
    codes = np.random.default_rng(0).integers(0, 256, (5, 2, 2, 3)).astype(np.uint8)
    x = on_grid(codes, GRID)
    fields = codec.encode(x)
    assert np.array_equal(fields["data"], codes)
    assert np.array_equal(codec.decode(fields), x)
    assert np.array_equal(codec.decode(fields, rows=np.array([3, 1])), x[[3, 1]])


def test_grid_codec_rounds_off_grid_values_and_clips_beyond_it() -> None:
    codec = Codec("uint8", (4,), grid=GRID)
    x = np.array([[0.1, 0.13, -40.0, 40.0]], np.float32)
    assert codec.decode(codec.encode(x)).tolist() == [[0.0, 0.25, -32.0, 31.75]]


def test_a_grid_memory_holds_1_5x_the_patterns_in_8_mb_and_stores_them_exactly() -> None:
    shape = (1, 8, 320)  # what the default AR1* stores of a 4x4 latent
    ranges = ReplayMemory(8 << 20, "uint8")
    grid = ReplayMemory(8 << 20, "uint8", grid=INT8_GRID)
    assert Codec("uint8", shape, INT8_GRID).bytes_per_pattern == 2560  # + 4 for the label
    codes = np.random.default_rng(1).integers(0, 256, (20, *shape)).astype(np.uint8)
    x = on_grid(codes, INT8_GRID)
    for memory in (ranges, grid):
        memory.add(x, np.arange(20) % 4, 0)
    assert (ranges.bytes_per_pattern, grid.bytes_per_pattern) == (3844, 2564)
    assert (ranges.capacity, grid.capacity) == (2182, 3271)
    assert grid.nbytes <= 8 << 20 and grid.footprint()["grid"] == "step 0.146084, zero 131"
    assert rows(grid.all()[0]) == rows(x)  # stored in a random order, every value exact
    assert rows(ranges.all()[0]) != rows(x)  # per-pattern ranges are close, not exact


def test_grid_state_round_trips_and_states_from_before_grids_have_none() -> None:
    memory = ReplayMemory(50_000, "uint8", "class_balanced", seed=2, grid=INT8_GRID)
    rng = np.random.default_rng(3)
    batches = [on_grid(rng.integers(0, 256, (30, 2, 2, 16)), INT8_GRID) for _ in range(3)]
    memory.add(batches[0], rng.integers(0, 5, 30), 0)
    loaded = ReplayMemory.from_state_dict(through_checkpoint(memory.state_dict()))
    assert loaded.grid == INT8_GRID and loaded.footprint() == memory.footprint()
    for i, x in enumerate(batches[1:], start=1):
        y = rng.integers(0, 5, 30)
        memory.add(x, y, i)
        loaded.add(x, y, i)
    assert np.array_equal(memory.all()[0], loaded.all()[0])
    old = ReplayMemory(50_000, "uint8")
    old.add(batches[0], np.zeros(30, np.int64), 0)
    state = through_checkpoint(old.state_dict())
    del state["grid"]
    assert ReplayMemory.from_state_dict(state).grid is None


@pytest.mark.parametrize(
    ("codec", "grid", "match"),
    [
        ("uint4", GRID, "codec 'uint4' cannot use one"),
        ("float32", GRID, "codec 'float32' cannot use one"),
        ("uint8", (0.0, 128), "step"),
        ("uint8", (float("nan"), 128), "step"),
        ("uint8", (0.25, 256), "zero"),
        ("uint8", (0.25, 1.0), "zero"),
        ("uint8", (0.25,), r"\(step, zero\)"),
    ],
)
def test_bad_grids_are_refused(codec: str, grid: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplayMemory(1000, codec, grid=grid)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_latents(datasets: Path, manifest: Manifest) -> np.ndarray:
    """(40, 4, 4, 320) latents of 40 real photographs (every 25th ImageNet sample)."""
    ex = open_extractor("latent", "onnx", "fp32", manifest=manifest)
    files = sorted((datasets / "imagenet-samples" / "images").glob("*.JPEG"))[::25]
    return ex.frames([read_image(f) for f in files])


@pytest.mark.parametrize(
    ("codec", "ratio", "max_rel_error"),
    [("float32", (1.0, 1.0), 0.0), ("uint8", (3.0, 3.4), 0.01), ("uint4", (5.0, 5.6), 0.08)],
)
def test_real_latents_compress_and_keep_their_predictions(
    real_latents: np.ndarray,
    manifest: Manifest,
    codec: str,
    ratio: tuple[float, float],
    max_rel_error: float,
) -> None:
    x = real_latents
    assert x.shape == (40, 4, 4, 320)
    memory = ReplayMemory(2 << 20, codec)
    memory.add(x, np.arange(len(x)), 0)
    report = memory.footprint()
    assert report["filled"] == 40 and report["codec"] == codec
    assert ratio[0] <= report["compression_ratio"] <= ratio[1]  # type: ignore[operator]
    decoded, labels = memory.all()
    original = x[labels]
    rel = np.linalg.norm(decoded - original) / np.linalg.norm(original)
    assert rel <= max_rel_error
    head = PretrainedHead.load(manifest.head())
    agree = (head.logits(decoded).argmax(1) == head.logits(original).argmax(1)).mean()
    assert agree >= 0.95

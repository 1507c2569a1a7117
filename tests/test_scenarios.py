from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_cl.bench.coil import RESHOOTS, coil100_reshot, coil_views, render_jobs
from edge_cl.bench.filelists import Scenario, load_filelists, load_scenario, write_filelists
from edge_cl.bench.orders import stream_order
from edge_cl.bench.render import (
    Conditions,
    SessionRenderer,
    composite,
    object_mask,
    place,
    random_crop,
    session_backgrounds,
    soft_alpha,
    texture,
)
from edge_cl.bench.scenarios import SUITES, available, build, generate, image_folder
from edge_cl.errors import DatasetError
from edge_cl.images import read_image

COIL_RE = re.compile(r"obj(\d+)__(\d+)\.png")
PLAIN_COIL = {"coil100-s2": 2, "coil100-s4": 4, "coil100-s8": 8}


@pytest.fixture(scope="module")
def coil_files(datasets: Path) -> dict[str, tuple[int, int]]:
    """Every COIL-100 file name -> (object, angle), straight from the folder listing."""
    names = os.listdir(datasets / "coil100" / "images")
    found = {n: COIL_RE.fullmatch(n) for n in names}
    return {n: (int(m.group(1)), int(m.group(2))) for n, m in found.items() if m}


def sessions(s: Scenario) -> list[list[str]]:
    """The stream's sessions: batch 0 split by label (one arc per object), then each batch."""
    paths0, labels0 = s.train_batches[0]
    first = [
        [p for p, lab in zip(paths0, labels0, strict=True) if lab == c]
        for c in dict.fromkeys(labels0)
    ]
    return first + [paths for paths, _ in s.train_batches[1:]]


def batch_objects(s: Scenario) -> list[set[int | str]]:
    return [set(labels) for _, labels in s.train_batches]


def all_train(s: Scenario) -> list[str]:
    return [p for paths, _ in s.train_batches for p in paths]


@pytest.mark.parametrize("name", list(PLAIN_COIL))
def test_coil_protocols_partition_the_real_files(
    datasets: Path, coil_files: dict[str, tuple[int, int]], name: str
) -> None:
    arcs = PLAIN_COIL[name]
    s = build(name, datasets, seed=0)
    train, test = all_train(s), s.test[0]
    assert len(train) == len(set(train)) and not set(train) & set(test)
    assert set(train) | set(test) == set(coil_files)
    expected_test = {n for n, (_, angle) in coil_files.items() if (angle // 5) % 4 == 2}
    assert set(test) == expected_test and len(test) == 1773
    objects = {o for o, _ in coil_files.values()}
    assert len(objects) == 99
    assert len(set(s.test[1])) == 99 and len(s.classes) == 99
    assert all(isinstance(label, int) for label in s.test[1])
    assert len(s.train_batches) == 1 + 99 * arcs - 10
    d = s.describe()
    assert d["batches"] == len(s.train_batches) and d["train_images"] == len(train)
    assert d["test_images"] == 1773 and d["classes"] == 99
    assert d["first_batch_classes"] == 10
    sizes = [len(p) for p, _ in s.train_batches]
    assert d["images_per_batch_min"] == min(sizes) and d["images_per_batch_max"] == max(sizes)
    # a label names one object, in train and test alike
    labels = [lab for _, labs in s.train_batches for lab in labs] + s.test[1]
    assert len({(coil_files[p][0], lab) for p, lab in zip(train + test, labels, strict=True)}) == 99


def test_coil_arcs_are_contiguous_in_angle(
    datasets: Path, coil_files: dict[str, tuple[int, int]]
) -> None:
    s = build("coil100-s4", datasets, seed=3)
    train_angles: dict[int, list[int]] = {}
    for obj, angle in coil_files.values():
        if (angle // 5) % 4 != 2:
            train_angles.setdefault(obj, []).append(angle)
    arcs_seen: Counter[int] = Counter()
    for paths in sessions(s):
        objs = {coil_files[p][0] for p in paths}
        assert len(objs) == 1, "a session holds one object"
        obj = objs.pop()
        order = sorted(train_angles[obj])
        positions = [order.index(coil_files[p][1]) for p in paths]
        assert positions == list(range(positions[0], positions[0] + len(paths)))
        arcs_seen[obj] += 1
    assert set(arcs_seen.values()) == {4} and len(arcs_seen) == 99


def test_batch0_has_one_arc_of_ten_objects_then_one_arc_per_batch(datasets: Path) -> None:
    s = build("coil100-s8", datasets, seed=1)
    objs = batch_objects(s)
    assert len(objs[0]) == 10
    assert all(len(o) == 1 for o in objs[1:])
    assert 50 <= len(s.train_batches[0][0]) <= 10 * 8


@pytest.mark.parametrize("name", ["coil100-s4", "cifar10-nic"])
def test_seed_changes_order_not_set(datasets: Path, name: str) -> None:
    a, b, a2 = build(name, datasets, 0), build(name, datasets, 1), build(name, datasets, 0)
    assert a.train_batches == a2.train_batches
    assert a.train_batches != b.train_batches
    assert sorted(all_train(a)) == sorted(all_train(b)) and a.test == b.test
    if name.startswith("coil"):
        assert {frozenset(p) for p in sessions(a)} == {frozenset(p) for p in sessions(b)}


def test_classes_arrive_over_time_and_come_back(datasets: Path) -> None:
    s = build("coil100-s4", datasets, seed=0)
    objs = [next(iter(o)) for o in batch_objects(s)[1:]]
    n = len(objs)
    first = {o: objs.index(o) for o in set(objs)}
    last = {o: n - 1 - objs[::-1].index(o) for o in set(objs)}
    new = [first[o] for o in first if o not in batch_objects(s)[0]]
    assert len(new) == 89
    # arrivals are spread over the first 3/4 of the stream, not bunched at its start
    thirds = np.histogram(new, bins=3, range=(0, 0.75 * n))[0]
    assert thirds.min() >= 20, thirds
    assert max(new) < 0.8 * n
    # objects come back with new views: most are seen again well after they arrived
    assert np.mean([last[o] - first[o] > 0.1 * n for o in first]) > 0.7


def test_stream_order_puts_each_new_class_first_unit_at_its_arrival() -> None:
    labels = [c for c in range(30) for _ in range(5)]
    order = stream_order(labels, {0, 1}, np.random.default_rng(0), span=0.5)
    assert sorted(order) == list(range(150))
    seq = [labels[i] for i in order]
    arrivals = sorted(seq.index(c) for c in range(2, 30))
    assert arrivals[-1] < 0.6 * 150 and arrivals[0] < 10
    # seen classes need not wait: their units are spread over the whole stream
    assert min(seq.index(0), seq.index(1)) < 30


def test_cifar_nc_counts(datasets: Path) -> None:
    s = build("cifar10-nc", datasets, seed=0)
    assert [len(p) for p, _ in s.train_batches] == [3000] * 5
    assert [len(o) for o in batch_objects(s)] == [2] * 5
    assert set().union(*batch_objects(s)) == set(range(10))
    for _, labels in s.train_batches:
        assert sorted(Counter(labels).values()) == [1500, 1500]
    assert len(set(all_train(s))) == 15000
    assert len(s.test[0]) == 3000 and sorted(Counter(s.test[1]).values()) == [300] * 10
    assert all(p.startswith("test/") for p in s.test[0])
    assert s.meta["classes"][0] == "airplane" and s.meta["classes"][9] == "truck"
    assert build("cifar10-nc", datasets, seed=1).train_batches != s.train_batches


def test_cifar_nic_counts(datasets: Path) -> None:
    s = build("cifar10-nic", datasets, seed=0)
    labels0 = s.train_batches[0][1]
    assert sorted(Counter(labels0).values()) == [150, 150]
    assert all(len(p) == 50 and len(set(lab)) == 1 for p, lab in s.train_batches[1:])
    assert len(s.train_batches) == 1 + (15000 - 300) // 50 == 295
    train = all_train(s)
    assert len(train) == len(set(train)) == 15000 and not set(train) & set(s.test[0])
    d = s.describe()
    assert (d["classes"], d["first_batch_classes"], d["test_images"]) == (10, 2, 3000)


def test_tinyimagenet_class_incremental_and_small_batch_counts(datasets: Path) -> None:
    nc = build("tinyimagenet-nc", datasets, seed=0)
    assert [len(p) for p, _ in nc.train_batches] == [2000] * 10
    assert [len(o) for o in batch_objects(nc)] == [10] * 10
    assert set().union(*batch_objects(nc)) == set(range(100))
    assert len(nc.test[0]) == 5000 and sorted(set(Counter(nc.test[1]).values())) == [50]
    nic = build("tinyimagenet-nic", datasets, seed=0)
    assert len(set(nic.train_batches[0][1])) == 10 and len(nic.train_batches[0][0]) == 400
    assert all(len(p) == 40 and len(set(lab)) == 1 for p, lab in nic.train_batches[1:])
    assert sorted(all_train(nic)) == sorted(all_train(nc))  # the same images, another order
    assert nic.test == nc.test
    assert build("tinyimagenet-nc", datasets, seed=1).train_batches != nc.train_batches


@pytest.mark.parametrize("family", ["coil100-sessions", "coil100-clutter"])
def test_rendered_coil_class_incremental_and_new_instance_orders(
    datasets: Path, family: str
) -> None:
    nic = build(family, datasets, seed=0, render=False)
    nc = build(f"{family}-nc", datasets, seed=0, render=False)
    ni = build(f"{family}-ni", datasets, seed=0, render=False)
    assert sorted(all_train(nc)) == sorted(all_train(ni)) == sorted(all_train(nic))
    assert nc.test == ni.test == nic.test
    objects = batch_objects(nc)
    assert [len(o) for o in objects] == [10] * 9 + [9]  # 99 objects, 10 new ones a batch
    assert all(not (a & b) for i, a in enumerate(objects) for b in objects[i + 1 :])
    sessions = [{p.split("/")[0] for p in paths} for paths, _ in ni.train_batches]
    assert sorted(len(s) for s in sessions) == [1, 1, 1, 1] and len(ni.train_batches) == 4
    assert image_folder(f"{family}-nc") == image_folder(f"{family}-ni") == family


def test_dev_and_holdout_suites_are_disjoint_and_cover_every_shape() -> None:
    dev, holdout = set(SUITES["dev"]), set(SUITES["holdout"])
    assert not dev & holdout and (dev | holdout) <= set(available())
    for suite in (dev, holdout):
        assert any(n.endswith("-nc") for n in suite) and any(n.endswith("-ni") for n in suite)
        assert any(not n.endswith(("-nc", "-ni")) for n in suite)  # small-batch NIC


def test_generate_writes_filelists_that_load_back(datasets: Path, tmp_path: Path) -> None:
    s = generate("coil100-s2", datasets, tmp_path / "s2", seed=5)
    assert (tmp_path / "s2" / "train_batch_188_filelist.txt").is_file()
    again = load_filelists(datasets / "coil100" / "images", tmp_path / "s2")
    assert again.train_batches == s.train_batches and again.test == s.test
    assert load_scenario(tmp_path / "s2").describe() == s.describe()
    assert again.meta["seed"] == 5 and again.name == "coil100-s2"


def test_unknown_scenario_and_missing_data_raise(datasets: Path, tmp_path: Path) -> None:
    assert {"coil100-s2", "coil100-s4", "coil100-s8", "cifar10-nc", "cifar10-nic"} <= set(
        available()
    )
    with pytest.raises(DatasetError, match="unknown scenario 'coil100-s3'"):
        build("coil100-s3", datasets)
    with pytest.raises(DatasetError, match=r"datasets folder .* does not exist"):
        build("coil100-s2", tmp_path / "none")
    with pytest.raises(DatasetError, match="COIL-100 images not found"):
        build("coil100-s2", tmp_path)
    with pytest.raises(DatasetError, match="CIFAR-10 train images not found"):
        build("cifar10-nc", tmp_path)
    (tmp_path / "coil100" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no COIL-100 files"):
        coil_views(tmp_path / "coil100" / "images")


# --- hard variants -------------------------------------------------------------------------


def circular_run(positions: list[int], n: int) -> bool:
    """True if ``positions`` (in order) are consecutive on a circle of ``n`` slots."""
    return all((b - a) % n == 1 for a, b in itertools.pairwise(positions))


def test_coil_arc_holds_out_one_contiguous_arc_per_object(
    datasets: Path, coil_files: dict[str, tuple[int, int]]
) -> None:
    s = build("coil100-arc", datasets, seed=0)
    views: dict[int, list[int]] = {}
    for obj, angle in coil_files.values():
        views.setdefault(obj, []).append(angle)
    circle = {obj: sorted(a) for obj, a in views.items()}
    test_by_obj: dict[int, list[int]] = {}
    for p in s.test[0]:
        obj, angle = coil_files[p]
        test_by_obj.setdefault(obj, []).append(circle[obj].index(angle))
    assert len(test_by_obj) == 99 and {len(v) for v in test_by_obj.values()} == {18}
    for obj, positions in test_by_obj.items():
        assert circular_run(positions, len(circle[obj])), obj
    starts = {min(p) for p in test_by_obj.values()}
    assert len(starts) > 30, "held-out arcs start at different angles per object"
    train = all_train(s)
    assert not set(train) & set(s.test[0]) and set(train) | set(s.test[0]) == set(coil_files)
    for paths in sessions(s):
        obj = coil_files[paths[0]][0]
        assert circular_run([circle[obj].index(coil_files[p][1]) for p in paths], len(circle[obj]))
    assert len(sessions(s)) == 4 * 99
    assert build("coil100-arc", datasets, seed=1).test == s.test


def test_coil_sessions_plan(datasets: Path) -> None:
    s = build("coil100-sessions", datasets, seed=0, render=False)
    plain = build("coil100-s4", datasets, seed=0)
    assert s.describe() == plain.describe()
    session_of = lambda p: int(p.split("/")[0][1:])  # noqa: E731
    for paths in sessions(s):
        assert len({session_of(p) for p in paths}) == 1
    per_object: dict[str, set[int]] = {}
    for p in all_train(s):
        per_object.setdefault(p.split("/")[1], set()).add(session_of(p))
    assert all(v == {0, 1, 2, 3} for v in per_object.values()) and len(per_object) == 99
    assert Counter(session_of(p) for p in s.test[0]).keys() == {4, 5}
    other = build("coil100-sessions", datasets, seed=7, render=False)
    assert sorted(all_train(other)) == sorted(all_train(s)) and other.test == s.test
    assert other.train_batches != s.train_batches


def test_coil_clutter_plan_has_rare_objects(datasets: Path) -> None:
    s = build("coil100-clutter", datasets, seed=0, render=False)
    arcs_per_object = Counter(p[0].split("/")[1] for p in sessions(s))
    assert len(arcs_per_object) == 99 and len(s.classes) == 99
    assert Counter(arcs_per_object.values()) == {1: 20, 4: 79}
    assert sorted(s.meta["single_arc_objects"]) == sorted(
        o for o, n in arcs_per_object.items() if n == 1
    )
    assert len(s.test[0]) == 1773 and len(s.train_batches) == 1 + 79 * 4 + 20 - 10


def test_rendered_scenarios_on_a_subset(datasets: Path, tmp_path: Path) -> None:
    shared = tmp_path / "images"
    for name in RESHOOTS:
        s = coil100_reshot(name, datasets, 0, shared / name, True, objects=12)
        assert s.describe()["classes"] == 12 and s.meta["render_seconds"] > 0
        files = [f for i in range(len(s.train_batches)) for f in s.train_files(i)]
        files += s.test_files()
        assert len(files) == len(set(files)) and all(f.is_file() for f in files)
        img = read_image(files[0])
        assert img.shape == (128, 128, 3)
        # reused across seeds: same images, nothing rendered again
        stamp = (shared / name / "render.json").stat().st_mtime_ns
        again = coil100_reshot(name, datasets, 1, shared / name, True, objects=12)
        assert again.meta["render_seconds"] == 0.0 and again.train_batches != s.train_batches
        assert (shared / name / "render.json").stat().st_mtime_ns == stamp
    write_filelists(again, tmp_path / "lists")
    reopened = load_scenario(tmp_path / "lists")  # checks that every listed image exists
    assert reopened.root == (shared / "coil100-clutter").resolve()
    assert reopened.train_batches == again.train_batches


def test_render_jobs_are_deterministic_and_order_free(datasets: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    renderer = SessionRenderer(
        [Conditions.random(rng) for _ in range(2)], session_backgrounds(2, rng), scale=(0.6, 0.9)
    )
    source = datasets / "coil100" / "images"
    jobs = [
        (f"obj{o}__{a}.png", f"s{s}/o{o}_{a}.jpg", s, o, a)
        for o in (5, 9)
        for a in (0, 45)
        for s in (0, 1)
    ]
    render_jobs(jobs, renderer, source, tmp_path / "a", "def")
    render_jobs(jobs[::-1], renderer, source, tmp_path / "b", "def")
    render_jobs(jobs, renderer, source, tmp_path / "c", "other definition")
    for _, dest, *_ in jobs:
        a, b, c = ((tmp_path / d / dest).read_bytes() for d in "abc")
        assert a == b and a != c
    first, second = (read_image(tmp_path / "a" / jobs[i][1]).astype(float) for i in (0, 1))
    assert np.abs(first - second).mean() > 10, "the two sessions look different"


# --- render functions ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def coil_images(datasets: Path) -> list[np.ndarray]:
    folder = datasets / "coil100" / "images"
    return [read_image(folder / f"obj{o}__{a}.png") for o, a in SAMPLE_VIEWS]


SAMPLE_VIEWS = [(3, 0), (17, 90), (25, 0), (47, 180), (69, 0), (98, 270), (32, 45), (83, 300)]


def test_mask_covers_the_object_and_not_the_background(coil_images: list[np.ndarray]) -> None:
    for img in coil_images:
        m = object_mask(img)
        clearly_object = img.max(axis=2) > 70
        assert m[clearly_object].mean() > 0.98
        corners = np.concatenate([m[:6, :6].ravel(), m[-6:, -6:].ravel(), m[:6, -6:].ravel()])
        assert not corners.any()
        assert 0.1 < m.mean() < 0.9


def test_mask_fills_holes_and_drops_specks() -> None:
    img = np.full((64, 64, 3), 25, np.uint8)
    cv2.circle(img, (32, 32), 16, (180, 120, 60), -1)
    cv2.circle(img, (32, 32), 5, (20, 20, 20), -1)  # a dark logo inside the object
    img[2, 60] = 255  # a hot pixel
    m = object_mask(img)
    assert m[32, 32] and not m[2, 60]
    assert abs(int(m.sum()) - int(np.pi * 16**2)) < 60


def test_composite_keeps_object_pixels(coil_images: list[np.ndarray]) -> None:
    img = coil_images[3]
    alpha = soft_alpha(object_mask(img))
    bg = texture(img.shape[:2], (30, 160, 90), 20.0, 6.0, np.random.default_rng(0))
    out = composite(img, alpha, bg)
    inside, outside = alpha == 1, alpha == 0
    assert inside.mean() > 0.2 and outside.mean() > 0.2
    np.testing.assert_array_equal(out[inside], img[inside].astype(np.float32))
    np.testing.assert_array_equal(out[outside], bg[outside].astype(np.float32))


def test_place_shrinks_and_moves_the_object() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    alpha = np.zeros((64, 64), np.float32)
    alpha[16:48, 16:48] = 1
    _, moved = place(img, alpha, 0.5, (10.0, -5.0))
    ys, xs = np.nonzero(moved > 0.5)
    assert abs(moved.sum() - 256) < 8
    assert abs(xs.mean() - 41.5) < 1 and abs(ys.mean() - 26.5) < 1


def test_conditions_change_statistics_as_intended(coil_images: list[np.ndarray]) -> None:
    img = coil_images[6]
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(Conditions().apply(img, rng), img)
    mean = img.astype(float).mean()
    assert Conditions(gain=1.3).apply(img, rng).mean() > 1.2 * mean
    assert Conditions(gain=0.5).apply(img, rng).mean() < 0.55 * mean
    assert Conditions(gamma=1.6).apply(img, rng).mean() < 0.85 * mean
    cast = Conditions(cast=(1.2, 1.0, 0.8)).apply(img, rng).astype(float)
    ratio = cast[:, :, 0].mean() / cast[:, :, 2].mean()
    assert ratio > 1.35 * img[:, :, 0].mean() / img[:, :, 2].mean()

    def sharpness(x: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    assert sharpness(Conditions(blur=1.5).apply(img, rng)) < 0.3 * sharpness(img)
    flat = np.full((128, 128, 3), 120, np.uint8)
    noisy = Conditions(noise=8.0).apply(flat, rng).astype(float)
    assert abs(noisy.std() - 8.0) < 0.5 and abs(noisy.mean() - 120) < 0.5


def test_texture_and_crop_statistics() -> None:
    rng = np.random.default_rng(0)
    calm = texture((96, 96), (100, 100, 100), 5.0, 8.0, rng).astype(float)
    busy = texture((96, 96), (100, 100, 100), 30.0, 8.0, rng).astype(float)
    assert calm.std() < 7 < 20 < busy.std() and abs(busy.mean() - 100) < 10
    photo = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    assert random_crop(photo, 64, rng).shape == (64, 64, 3)


def test_session_renderer_is_deterministic_and_sessions_differ(
    coil_images: list[np.ndarray],
) -> None:
    rng = np.random.default_rng(1)
    r = SessionRenderer([Conditions.random(rng) for _ in range(3)], session_backgrounds(3, rng))
    img = coil_images[0]
    a = r.render(img, 0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, r.render(img, 0, np.random.default_rng(5)))
    b = r.render(img, 1, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8
    corner = (slice(0, 10), slice(0, 10))
    assert (
        np.abs(a[corner].astype(float).mean(axis=(0, 1)) - b[corner].mean(axis=(0, 1))).max() > 15
    )
    assert np.abs(a[corner].astype(float) - img[corner]).mean() > 15, "background replaced"
    with pytest.raises(ValueError, match="one Conditions"):
        SessionRenderer([Conditions()], [])

"""Frame sources on real files (COIL-100 and CORe50 images, a video written here), the missing
camera, real-time pacing, the background reader's dropping and reopening, the synthetic scene.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_cl.errors import CameraError, FrameError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from firmware_bridge.sources import (
    DEFAULT_OBJECTS,
    CapturedFrame,
    FileList,
    FrameSource,
    ImageFolder,
    LatestFrame,
    SyntheticScene,
    VideoFile,
    gstreamer_available,
    open_source,
    replay,
)


class Clock:
    """Stands in for the replay sources' ``time`` module: ``sleep`` moves the time on instead of
    waiting, so pacing is checked exactly and a busy machine cannot disturb it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The replay sources' clock, replaced by a :class:`Clock` for the test."""
    fake = Clock()
    monkeypatch.setattr(replay, "time", fake)
    return fake


class Counted(FrameSource):
    """``source`` as read by a :class:`LatestFrame` thread, counting the reads it started and
    finished so that a test can wait for them."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.name = source.name
        self.started = 0
        self.finished = 0
        self._cond = threading.Condition()

    @property
    def on_demand(self) -> bool:
        return self.source.on_demand

    def open(self) -> None:
        self.source.open()

    def read(self) -> CapturedFrame | None:
        with self._cond:
            self.started += 1
        frame = self.source.read()
        with self._cond:
            self.finished += 1
            self._cond.notify_all()
        return frame

    def close(self) -> None:
        self.source.close()

    def wait_finished(self, reads: int, timeout: float = 60.0) -> None:
        """Return once ``reads`` reads have finished (fail after ``timeout`` seconds)."""
        with self._cond:
            done = self._cond.wait_for(lambda: self.finished >= reads, timeout)
        assert done, f"the reader stopped after {self.finished} reads"


COIL_FILES = ["obj5__0.png", "obj5__5.png", "obj17__90.png", "obj42__180.png", "obj88__355.png"]


@pytest.fixture(scope="module")
def coil(datasets: Path) -> Path:
    return datasets / "coil100" / "images"


def truncated_jpeg(source: Path, target: Path) -> Path:
    """A real photo encoded as JPEG, then cut in half (a copy interrupted mid-file)."""
    photo = cv2.imread(str(source))
    assert photo is not None
    ok, encoded = cv2.imencode(".jpg", photo)
    assert ok
    target.write_bytes(encoded.tobytes()[: encoded.size // 2])
    return target


def video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB ``frames`` as an MJPG .avi with OpenCV."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# --- files ---------------------------------------------------------------------------------------


def test_folder_of_class_subfolders_gives_the_subfolder_as_truth(datasets: Path) -> None:
    root = datasets / "core50-samples" / "core50_128x128"
    expected = sorted(root.rglob("*.png"))
    source = open_source(str(root))
    assert isinstance(source, ImageFolder)
    with source:
        frames = list(source)
    assert len(frames) == len(expected) == 90
    assert [f.index for f in frames] == list(range(90))
    assert [f.truth for f in frames] == [p.parent.name for p in expected]
    assert {f.truth for f in frames} >= {"o13", "o35"}
    for frame, path in zip(frames[::30], expected[::30], strict=True):
        np.testing.assert_array_equal(frame.image, read_image(path))
        assert frame.image.shape == (128, 128, 3) and frame.image.flags.c_contiguous
    assert source.skipped == 0
    assert frames[0].timestamp <= frames[-1].timestamp <= time.monotonic()


def test_flat_folder_has_no_truth_and_resizes(coil: Path) -> None:
    first = sorted(p for p in coil.iterdir() if p.suffix == ".png")[:3]
    with open_source(f"folder:{coil}", size=(64, 48)) as source:
        frames = [source.read() for _ in range(3)]
    for frame, path in zip(frames, first, strict=True):
        assert frame is not None and frame.truth is None
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        small = cv2.resize(read_image(path), (64, 48), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(frame.image, small)


def test_filelist_with_an_image_root(coil: Path, tmp_path: Path) -> None:
    labels = ["cup", "cup", "duck", "car", "can"]
    filelist = tmp_path / "stream.txt"
    filelist.write_text("".join(f"{n} {lab}\n" for n, lab in zip(COIL_FILES, labels, strict=True)))
    source = open_source(f"filelist:{filelist}@{coil}")
    assert isinstance(source, FileList)
    with source:
        frames = list(source)
    assert [f.truth for f in frames] == labels
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for frame, name in zip(frames, COIL_FILES, strict=True):
        np.testing.assert_array_equal(frame.image, read_image(coil / name))


def test_filelist_paths_default_to_its_folder(coil: Path, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for name in COIL_FILES[:2]:
        shutil.copy(coil / name, tmp_path / "imgs" / name)
    (tmp_path / "list.txt").write_text(f"imgs/{COIL_FILES[0]} 5\nimgs/{COIL_FILES[1]} 6\n")
    with open_source(str(tmp_path / "list.txt")) as source:
        assert [(f.index, f.truth) for f in source] == [(0, "5"), (1, "6")]


def test_corrupt_image_is_skipped_and_counted(coil: Path, tmp_path: Path) -> None:
    for label, name in (("a", COIL_FILES[0]), ("b", COIL_FILES[2]), ("c", COIL_FILES[3])):
        (tmp_path / label).mkdir()
        shutil.copy(coil / name, tmp_path / label / name)
    truncated_jpeg(coil / COIL_FILES[1], tmp_path / "b" / "broken.jpg")
    with ImageFolder(tmp_path) as source, pytest.warns(RuntimeWarning, match="truncated"):
        frames = list(source)
    assert source.skipped == 1
    assert [f.truth for f in frames] == ["a", "b", "c"]
    assert [f.index for f in frames] == [0, 2, 3]  # b/broken.jpg sorts before b/obj17...

    filelist = tmp_path / "list.txt"
    filelist.write_text(f"b/broken.jpg x\nb/broken.jpg x\na/{COIL_FILES[0]} a\n")
    with FileList(filelist, loop=True) as looping, pytest.warns(RuntimeWarning):
        looped = [looping.read() for _ in range(3)]
    assert [(f.index, f.truth) for f in looped if f is not None] == [(2, "a"), (5, "a"), (8, "a")]
    assert looping.skipped == 6


def test_all_corrupt_loop_ends_instead_of_spinning(coil: Path, tmp_path: Path) -> None:
    truncated_jpeg(coil / COIL_FILES[0], tmp_path / "broken.jpg")
    with ImageFolder(tmp_path, loop=True) as source, pytest.warns(RuntimeWarning):
        assert source.read() is None
    assert source.skipped == 1


def test_missing_files_fail_at_open_with_the_path(coil: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for spec in (f"folder:{missing}", f"filelist:{missing}.txt", f"{missing}.mp4"):
        source = open_source(spec)
        with pytest.raises(CameraError, match="nowhere"):
            source.open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="no images"):
        ImageFolder(tmp_path / "empty").open()
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{COIL_FILES[0]} 1\n")
    with pytest.raises(CameraError, match="FILE@ROOT"):
        FileList(filelist).open()  # the images are not beside the filelist
    filelist.write_text("just-a-path\n")
    with pytest.raises(CameraError, match=r"list\.txt:1"):
        FileList(filelist, root=coil).open()
    with pytest.raises(CameraError, match="not open"):
        ImageFolder(coil).read()


def test_video_file_in_rgb_and_looping(coil: Path, tmp_path: Path) -> None:
    red = np.zeros((96, 128, 3), np.uint8)
    red[:, :, 0] = 255
    photos = [cv2.resize(read_image(coil / n), (128, 96)) for n in COIL_FILES]
    path = video(tmp_path / "clip.avi", [red, *photos, *photos])  # 11 frames
    source = open_source(str(path))
    assert isinstance(source, VideoFile)
    with source:
        frames = list(source)
    assert len(frames) == 11 and [f.index for f in frames] == list(range(11))
    assert frames[0].image.shape == (96, 128, 3) and frames[0].truth is None
    assert frames[0].image[..., 0].mean() > 200 and frames[0].image[..., 2].mean() < 40  # RGB
    for frame, photo in zip(frames[1:6], photos, strict=True):  # MJPG is lossy, but close
        assert np.abs(frame.image.astype(int) - photo).mean() < 6

    with open_source(f"video:{path}", loop=True, size=(64, 48)) as looping:
        looped = [looping.read() for _ in range(25)]
    assert [f.index for f in looped if f is not None] == list(range(25))
    images = [f.image.astype(int) for f in looped if f is not None]
    assert images[0].shape == (48, 64, 3)
    assert np.abs(images[11] - images[0]).mean() < 2  # back to the red frame
    assert np.abs(images[22] - images[0]).mean() < 2
    assert np.abs(images[10] - images[0]).mean() > 30


def test_loop_restarts_an_image_replay(coil: Path, tmp_path: Path) -> None:
    filelist = tmp_path / "list.txt"
    filelist.write_text("".join(f"{n} {i}\n" for i, n in enumerate(COIL_FILES[:3])))
    with FileList(filelist, root=coil, loop=True) as source:
        frames = [source.read() for _ in range(7)]
    assert [(f.index, f.truth) for f in frames if f is not None] == [
        (i, str(i % 3)) for i in range(7)
    ]
    assert frames[0] is not None and frames[6] is not None
    np.testing.assert_array_equal(frames[6].image, frames[0].image)


# --- real-time pacing ----------------------------------------------------------------------------


def test_fps_skips_the_frames_a_slow_consumer_missed(
    coil: Path, tmp_path: Path, clock: Clock
) -> None:
    names = sorted(p.name for p in coil.glob("obj5__*.png"))[:40]
    filelist = tmp_path / "list.txt"
    filelist.write_text("".join(f"{n} obj5\n" for n in names))
    with FileList(filelist, root=coil, fps=50) as source:
        first = source.read()
        clock.now += 0.3  # the consumer took 15 frame intervals at 50 fps
        late = source.read()
        rest = list(source)
    assert first is not None and first.index == 0
    assert late is not None and late.index == 15 and source.late == 14
    np.testing.assert_array_equal(late.image, read_image(coil / names[late.index]))
    assert [f.index for f in rest] == list(range(16, 40))  # on time again: none skipped

    with FileList(filelist, root=coil, fps=100) as source:
        assert source.read() is not None
        clock.now += 0.5  # every frame is due: the replay is over
        assert source.read() is None
    assert source.late == 39


def test_fps_paces_in_real_time_and_none_is_as_fast_as_possible(clock: Clock) -> None:
    with SyntheticScene(size=(64, 48), fps=20) as scene:
        frames = [scene.read() for _ in range(6)]
    assert [f.index for f in frames] == list(range(6))  # a consumer on time misses none
    times = [f.timestamp - frames[0].timestamp for f in frames]
    assert times == pytest.approx([i / 20 for i in range(6)])  # frame i at i / fps, never early
    clock.sleeps.clear()
    with open_source("synthetic", size=(64, 48)) as fast:
        indices = [fast.read().index for _ in range(30)]  # type: ignore[union-attr]
    assert indices == list(range(30)) and clock.sleeps == []  # never waits


# --- specs, cameras that are not there -----------------------------------------------------------


def test_missing_camera_says_what_to_do() -> None:
    for spec in ("v4l2:57", "/dev/video57"):
        source = open_source(spec)
        assert source.name == "v4l2:57"
        with pytest.raises(CameraError, match=r"/dev/video57.*v4l2-ctl --list-devices"):
            source.open()
        with pytest.raises(CameraError, match="not open"):
            source.read()
    with pytest.raises(CameraError, match="/dev/video57"):
        LatestFrame(open_source("v4l2:57")).start()


@pytest.mark.parametrize("spec", ["webcam", "v4l2:front", "video:", "/no/such/dir", "img.jpg"])
def test_unknown_spec_lists_the_accepted_forms(spec: str) -> None:
    with pytest.raises(CameraError) as error:
        open_source(spec)
    for form in ("synthetic", "v4l2:N", "gst:PIPELINE", "picamera2", "folder:DIR", "filelist:"):
        assert form in str(error.value)


def test_gstreamer_pipeline_needs_opencv_with_gstreamer() -> None:
    source = open_source("gst:videotestsrc num-buffers=3 ! videoconvert ! appsink", size=(64, 48))
    if gstreamer_available():
        with source:
            assert source.read().image.shape == (48, 64, 3)  # type: ignore[union-attr]
    else:
        with pytest.raises(CameraError, match=r"without GStreamer.*getBuildInformation"):
            source.open()


@pytest.mark.skipif(
    importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here"
)
def test_picamera2_missing_says_how_to_install_it() -> None:
    with pytest.raises(CameraError, match=r"python3-picamera2.*--system-site-packages"):
        open_source("picamera2:1").open()


def test_bad_arguments() -> None:
    with pytest.raises(CameraError, match="size"):
        open_source("synthetic", size=(0, 10))
    with pytest.raises(CameraError, match="fps"):
        open_source("synthetic", fps=-1)
    with pytest.raises(FrameError, match="contiguous"):
        CapturedFrame(np.zeros((8, 8, 3), np.uint8)[:, ::2], 0.0, 0)
    with pytest.raises(ValueError, match="backoff"):
        LatestFrame(SyntheticScene(), backoff=(1.0, 0.5))


# --- the background reader -----------------------------------------------------------------------


def test_latest_frame_drops_old_frames_and_keeps_the_newest() -> None:
    scene = Counted(SyntheticScene(size=(64, 48), fps=200))
    with LatestFrame(scene) as latest:
        frames = []
        for _ in range(5):
            scene.wait_finished(scene.finished + 3)  # a slow consumer: 3 frames arrive meanwhile
            read_before = latest.stats["read"]
            frame = latest.get(timeout=60.0)
            assert frame is not None
            assert frame.index >= read_before - 1  # the newest at the time of asking
            frames.append(frame)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and indices[-1] - indices[0] >= 8
    stats = latest.stats
    assert stats["delivered"] == 5 and stats["dropped"] > 0
    assert stats["read"] - stats["delivered"] - stats["dropped"] in (0, 1)  # one may be pending
    assert stats["reopens"] == stats["errors"] == 0 and latest.last_error is None


def test_latest_frame_reads_an_unpaced_replay_one_frame_ahead_and_drops_nothing() -> None:
    scene = Counted(SyntheticScene(size=(64, 48)))
    assert scene.on_demand and not SyntheticScene(fps=30).on_demand
    with LatestFrame(scene) as latest:
        indices: list[int] = []
        for _ in range(4):
            scene.wait_finished(len(indices) + 1)  # the next frame is read
            assert scene.started == len(indices) + 1  # and no other: it waits to be taken
            frame = latest.get(timeout=60.0)
            assert frame is not None
            indices.append(frame.index)
    assert indices == [0, 1, 2, 3] and latest.stats["dropped"] == 0


def test_latest_frame_ends_with_a_finite_stream(datasets: Path) -> None:
    root = datasets / "core50-samples" / "core50_128x128" / "s2"
    with LatestFrame(open_source(str(root))) as latest:
        taken = []
        while (frame := latest.get(timeout=60.0)) is not None:
            taken.append(frame.index)
        assert latest.ended
    stats = latest.stats
    assert stats["read"] == len(list(root.rglob("*.png"))) and stats["errors"] == 0
    assert (
        stats["delivered"] == len(taken) and stats["delivered"] + stats["dropped"] == stats["read"]
    )


class Flaky(FrameSource):
    """A camera unplugged at its 3rd read, which then fails ``failed_opens`` reopens. Its frames
    are made when asked for (``on_demand``), so its reader never spins."""

    name = "flaky"

    def __init__(self, failed_opens: int = 0) -> None:
        self.reads = 0
        self.failed_opens = failed_opens
        self.opens = 0
        self.is_open = False
        self.unplugged = threading.Event()

    @property
    def on_demand(self) -> bool:
        return True

    def open(self) -> None:
        self.opens += 1
        if 1 < self.opens <= 1 + self.failed_opens:
            raise CameraError("no camera at /dev/video9")
        self.is_open = True

    def read(self) -> CapturedFrame:
        assert self.is_open, "read on a closed source"
        self.reads += 1
        if self.reads == 3:
            self.unplugged.set()
            raise CameraError("flaky stopped delivering frames")
        return CapturedFrame(np.full((4, 4, 3), self.reads, np.uint8), time.monotonic(), self.reads)

    def close(self) -> None:
        self.is_open = False


def test_latest_frame_reopens_with_exponential_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float | None] = []

    class Recorded(threading.Event):  # the reader's stop event: its waits are the back-off
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait(timeout)

    camera = Flaky(failed_opens=5)
    with monkeypatch.context() as patch:
        patch.setattr(threading, "Event", Recorded)
        latest = LatestFrame(camera, backoff=(0.05, 0.1))
    with latest:
        frames = [latest.get(timeout=60.0) for _ in range(3)]
    assert [f.index if f is not None else None for f in frames] == [1, 2, 4]  # then reopened
    assert latest.stats["reopens"] == 1 and latest.stats["errors"] == 1 + 5
    assert latest.last_error is not None and "/dev/video9" in latest.last_error
    assert camera.opens == 1 + 6 and not camera.is_open  # stop() closed it
    assert waits == [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]  # doubled, capped (uncapped: ... 0.8, 1.6)


def test_latest_frame_without_reopen_ends() -> None:
    with LatestFrame(Flaky(), reopen=False) as latest:
        while latest.get(timeout=60.0) is not None:
            pass
        assert latest.ended
    assert latest.stats["read"] == 2 and latest.stats["reopens"] == 0
    assert latest.last_error == "CameraError: flaky stopped delivering frames"


def test_stop_interrupts_the_backoff_promptly() -> None:
    camera = Flaky()
    latest = LatestFrame(camera, backoff=(600.0, 600.0))
    latest.start()
    assert latest.get(timeout=60.0) is not None and latest.get(timeout=60.0) is not None
    assert camera.unplugged.wait(60.0)  # the 3rd read failed: a 600 s back-off begins
    waiting = threading.Thread(target=latest.get, daemon=True)  # a consumer without a timeout
    waiting.start()
    stopping = threading.Thread(target=latest.stop, daemon=True)
    stopping.start()
    stopping.join(60.0)
    waiting.join(60.0)
    assert not stopping.is_alive() and not waiting.is_alive()  # long before the back-off ends
    assert camera.opens == 1 and not camera.is_open
    latest.stop()  # twice is fine


# --- the synthetic scene -------------------------------------------------------------------------


def render(scene: SyntheticScene, labels: list[str | None]) -> list[CapturedFrame]:
    frames = []
    for label in labels:
        scene.show(label)
        frames.append(scene.read())
    return frames


def test_synthetic_scene_is_deterministic_per_seed() -> None:
    labels: list[str | None] = [None, "red cube", "red cube", "blue ball", None]
    with SyntheticScene(seed=7) as a, SyntheticScene(seed=7) as b, SyntheticScene(seed=8) as c:
        first, second, other = render(a, labels), render(b, labels), render(c, labels)
    for x, y, z in zip(first, second, other, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        assert np.abs(x.image.astype(int) - z.image).mean() > 5
    assert [f.truth for f in first] == labels
    assert [f.index for f in first] == [0, 1, 2, 3, 4]


def test_synthetic_show_switches_the_truth_and_rejects_unknown_objects() -> None:
    scene = SyntheticScene(size=(96, 64))
    assert scene.objects == DEFAULT_OBJECTS and scene.showing is None
    with scene:
        assert scene.read().truth is None
        scene.show("green cone")
        assert scene.showing == "green cone" and scene.read().truth == "green cone"
        scene.show(None)
        assert scene.read().truth is None
    with pytest.raises(ValueError, match=r"'teapot'.*red cube.*purple ring"):
        scene.show("teapot")
    custom = SyntheticScene(objects=("mug", "stapler"))
    custom.show("mug")
    with pytest.raises(ValueError, match="mug"):
        custom.show("red cube")


def test_synthetic_frames_vary_like_a_camera() -> None:
    with SyntheticScene(seed=1) as scene:
        scene.show("yellow star")
        frames = [scene.read().image for _ in range(50)]
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in itertools.pairwise(frames)]
    assert min(diffs) > 2.0  # jitter, light and noise: no two consecutive frames alike


def test_synthetic_objects_are_clearly_different_to_the_cnn(manifest: Manifest) -> None:
    """On the shipped ImageNet extractor's pooled features, a nearest-centroid classifier fit on
    4 frames of each object (and of the empty scene) names all 4 unseen frames of each."""
    classes: list[str | None] = [None, *DEFAULT_OBJECTS]
    with SyntheticScene(seed=3) as scene:
        frames = {label: [f.image for f in render(scene, [label] * 8)] for label in classes}
    extractor = open_extractor("pool", "onnx", "int8", manifest=manifest)
    features = {c: extractor.frames(frames[c]) for c in classes}
    features = {c: f / np.linalg.norm(f, axis=1, keepdims=True) for c, f in features.items()}
    centroids = np.stack([features[c][:4].mean(axis=0) for c in classes])
    for index, label in enumerate(classes):
        for feature in features[label][4:]:
            distances = np.linalg.norm(centroids - feature, axis=1)
            assert int(np.argmin(distances)) == index, (label, distances)

    def centre_colour(label: str) -> np.ndarray:
        pixels = np.concatenate([image[90:150, 130:190].reshape(-1, 3) for image in frames[label]])
        colour: np.ndarray = pixels.mean(axis=0)
        return colour

    red, green, blue = centre_colour("red cube")
    assert red > green + 60 and red > blue + 60
    red, green, blue = centre_colour("blue ball")
    assert blue > red + 60 and blue > green + 60

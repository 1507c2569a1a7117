from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_cl.device.config import DeviceConfig, load_config, parse_assignments
from edge_cl.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-cl.toml"
    path.write_text(text)
    return path


def test_toml_values_arrive_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'source = "v4l2:1"\nfps = 12\ncapture_size = [640, 480]\nloop = true\n'
        'state_dir = "~/edge-state"\nserial = "/dev/ttyACM0"\nthreads = 3\n'
        '[learner]\nname = "ar1"\nreplay_mb = 4\nreplay_per_epoch = 100\nreplay_grid = true\n',
    )
    config = load_config(path, {})
    assert config.source == "v4l2:1"
    assert config.fps == 12.0 and isinstance(config.fps, float)
    assert config.capture_size == (640, 480)
    assert config.loop is True
    assert config.state_dir == Path.home() / "edge-state"
    assert config.checkpoint == Path.home() / "edge-state" / "learner.ckpt"
    assert config.serial == "/dev/ttyACM0"
    assert config.threads == 3
    assert config.cut == "latent" and config.precision == "int8"
    assert config.learner == "ar1"
    options = {"replay_mb": 4.0, "replay_per_epoch": 100, "replay_grid": True}
    assert config.learner_options == options
    assert isinstance(config.learner_options["replay_mb"], float)


def test_overrides_win_and_are_converted(tmp_path: Path) -> None:
    path = write(tmp_path, 'fps = 12\nserial = "/dev/ttyACM0"\ncut = "pool"\n')
    config = load_config(
        path,
        parse_assignments(
            ["fps=7.5", "serial=none", "capture_size=320x240", "loop=yes", "max_frames=10"]
        ),
    )
    assert config.fps == 7.5
    assert config.serial is None
    assert config.capture_size == (320, 240)
    assert config.loop is True
    assert config.max_frames == 10
    assert config.cut == "pool"


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == DeviceConfig(runtime=config.runtime, state_dir=config.state_dir)
    assert config.source == "synthetic" and config.resolution == 128
    assert (config.teach_max_frames, config.teach_target_frames) == (120, 30)
    assert (config.learner, config.cut, config.learner_options) == ("ar1", "latent", {})
    assert config.learner_options == {}
    assert (config.unknown_accept, config.background_label) == (0.95, "nothing")


def test_socket_path_follows_xdg_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert DeviceConfig().socket_path == tmp_path / "run" / "edge-cl.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert DeviceConfig(state_dir=tmp_path).socket_path == tmp_path / "control.sock"
    assert DeviceConfig(control_socket=tmp_path / "c.sock").socket_path == tmp_path / "c.sock"


def test_the_shipped_example_is_valid() -> None:
    config = load_config(REPO / "deploy" / "edge-cl.toml", {})
    assert config.state_dir == Path("/var/lib/edge-cl")
    assert config.control_socket == Path("/run/edge-cl/control.sock")
    assert (config.learner, config.cut) == ("ar1", "latent")
    assert (config.unknown_accept, config.background_label) == (0.95, "nothing")  # the defaults
    options = {"replay_mb": 8.0, "replay_per_epoch": 512, "replay_grid": False, "epochs": 4}
    assert config.learner_options == options
    changed = load_config(REPO / "deploy" / "edge-cl.toml", {"learner.replay_mb": "4"})
    assert changed.learner_options == {**options, "replay_mb": 4.0}


@pytest.mark.parametrize(
    ("text", "overrides", "learner", "options", "cut"),
    [
        ('learner = "slda"\n', {}, "slda", {}, "pool"),
        ('[learner]\nname = "slda"\nshrinkage = 0.01\n', {}, "slda", {"shrinkage": 0.01}, "pool"),
        ("learner.replay_mb = 2\n", {}, "ar1", {"replay_mb": 2.0}, "latent"),
        ("", {"learner": "ncm"}, "ncm", {}, "pool"),
        ("", {"learner.name": "knn", "learner.k": "5"}, "knn", {"k": 5}, "pool"),
        ('learner = "ar1"\n', {"learner": "slda"}, "slda", {}, "pool"),
        (
            '[learner]\nname = "slda"\n',
            {"learner.streaming_covariance": "no"},
            "slda",
            {"streaming_covariance": False},
            "pool",
        ),
        (
            'cut = "pool"\n',
            {"learner.replay_per_epoch": "none"},
            "ar1",
            {"replay_per_epoch": None},
            "pool",
        ),
        (
            'learner = "cwr"\ncut = "auto"\n',
            {"learner.epochs": "2"},
            "cwr",
            {"epochs": 2},
            "latent",
        ),
        ("", {"learner": "cumulative", "cut": "pool"}, "cumulative", {}, "pool"),
    ],
)
def test_the_learner_by_name_or_table_and_the_cut_it_eats(
    tmp_path: Path,
    text: str,
    overrides: dict[str, str],
    learner: str,
    options: dict[str, object],
    cut: str,
) -> None:
    config = load_config(write(tmp_path, text), overrides)
    assert (config.learner, config.learner_options, config.cut) == (learner, options, cut)


def test_the_flat_keys_of_earlier_versions_are_read_as_learner_options(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "replay_mb = 4\nreplay_per_epoch = 64\nreplay_grid = true\n")
    config = load_config(path, {"epochs": "2"})
    options = {"replay_mb": 4.0, "replay_per_epoch": 64, "replay_grid": True, "epochs": 2}
    assert config.learner_options == options
    moved = [r.getMessage() for r in caplog.records if "is now learner." in r.getMessage()]
    assert len(moved) == 4 and "replay_mb is now learner.replay_mb" in moved[0]


def test_options_are_checked_when_a_config_is_built_in_python() -> None:
    config = DeviceConfig(learner="slda", learner_options={"shrinkage": 1})
    assert config.learner_options == {"shrinkage": 1.0} and config.cut == "pool"
    assert DeviceConfig(cut="pool").learner_options == {}
    with pytest.raises(ConfigError, match="replay_per_epoch must be >= 0 or None, got -1"):
        DeviceConfig(learner_options={"replay_per_epoch": -1})
    with pytest.raises(ConfigError, match=r"shrinkage must be 'oas' or a number in \(0, 1\]"):
        DeviceConfig(learner="slda", learner_options={"shrinkage": "x"})
    with pytest.raises(ConfigError, match="contradicts learner = 'slda'"):
        replace(config, cut="latent")
    assert replace(DeviceConfig(), learner="ncm", cut="auto").cut == "pool"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("fsp = 10\n", {}, "unknown key 'fsp'.*did you mean 'fps'"),
        ("", {"colour": "red"}, "unknown key 'colour' in --set"),
        ('fps = "fast"\n', {}, "fps = 'fast' in .*: expected a number"),
        ("", {"threads": "two"}, "threads = 'two' in --set: expected an integer"),
        ("threads = 0\n", {}, "threads = 0: must be >= 1"),
        ('cut = "middle"\n', {}, "cut = 'middle': must be 'auto', 'latent' or 'pool'"),
        ('learner = "sdla"\n', {}, "unknown learner 'sdla'.*did you mean 'slda'"),
        ("learner = 5\n", {}, "learner = 5: name a learner"),
        ("[learner]\nreplay_per_epoch = -1\n", {}, "replay_per_epoch must be >= 0 or None, got -1"),
        ("", {"learner.replay_per_epoch": "-1"}, "replay_per_epoch must be >= 0 or None, got -1"),
        ("[learner]\nreplay_mb = -2\n", {}, "replay_mb must be >= 0"),
        ("[learner]\nepochs = 0\n", {}, "epochs must be >= 1"),
        ("[learner]\nrepaly_mb = 4\n", {}, "'repaly_mb' is not an option.*'replay_mb'"),
        ("", {"learner.shrinkage": "0.1"}, "learner.shrinkage in --set.*option of slda"),
        (
            "[learner]\nreplay_mb = 4\n",
            {"learner": "slda"},
            "learner.replay_mb in .*edge-cl.toml \\(learner 'slda' comes from --set\\)",
        ),
        ('learner = "slda"\n', {"replay_mb": "4"}, "'replay_mb' is not an option of .*'slda'"),
        (
            '[learner]\nname = "slda"\nshrinkage = 0\n',
            {},
            r"shrinkage must be .oas. or a number in \(0, 1\]",
        ),
        ('learner = "ncm"\ncut = "latent"\n', {}, "cut = 'latent' contradicts learner = 'ncm'"),
        ("", {"learner.epochs": "many"}, "learner.epochs = 'many' in --set: expected an integer"),
        ("", {"learner.replay_grid": "maybe"}, "learner.replay_grid = 'maybe'.*true or false"),
        (
            "",
            {"learner.replay_grid": "true", "learner.replay_codec": "uint4"},
            "replay_grid = true stores uint8 codes",
        ),
        ("", {"learner.replay_codec": "jpeg"}, "replay_codec must be one of .* got .jpeg."),
        ("", {"learner.momentum": "1.5"}, r"momentum must be in \[0, 1\), got 1.5"),
        ("replay_mb = 4\n[learner]\nreplay_mb = 8\n", {}, "replay_mb and learner.replay_mb both"),
        ("[learner]\ndepth = 'pool'\n", {}, "'depth' is not an option.*the extractor's cut"),
        ("learner_options = {}\n", {}, "unknown key 'learner_options'"),
        ("", {"learner": "knn", "learner.k": "0"}, "k must be an int >= 1"),
        ("resolution = 100\n", {}, "resolution = 100: a multiple of 32"),
        ("resolution = 3200000\n", {}, "resolution = 3200000: a multiple of 32 from 32 to 1024"),
        ("", {"learner.replay_mb": "1e9"}, "replay_mb must be <= 4096, got 1000000000.0"),
        ("teach_max_frames = 1000000000\n", {}, "teach_max_frames = 1000000000: must be <= 2000"),
        ("threads = 4096\n", {}, "threads = 4096: must be <= 64"),
        ('capture_size = "100000x480"\n', {}, "capture_size.*from 1 to 8192"),
        ('runtime = "tensorrt"\n', {}, "runtime = 'tensorrt': choose one of"),
        ("", {"teach_target_frames": "200"}, "teach_target_frames = 200: must be <="),
        ("", {"unknown_accept": "1.5"}, r"unknown_accept = 1.5: must be in \(0, 1\]"),
        ('background_label = ""\n', {}, "background_label = '': a label must have 1 to 64"),
        ("", {"background_label": "a\tb"}, r"background_label = 'a\\tb'.*control characters"),
        ("", {"fps": "nan"}, "fps = 'nan'.*finite"),
        ("loop = 3\n", {}, "loop = 3.*true or false"),
        ("capture_size = [640]\n", {}, "capture_size.*WIDTHxHEIGHT"),
        ("source = 5\n", {}, "source = 5.*expected a string"),
        ("fps = = 3\n", {}, "cannot read config file"),
    ],
)
def test_bad_keys_and_values_are_refused(
    tmp_path: Path, text: str, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_missing_file_and_bad_assignment() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/nonexistent/edge-cl.toml"), {})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["fps"])

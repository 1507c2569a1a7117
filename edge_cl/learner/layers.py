"""The numpy layers of the learner head, their loss and their optimiser.

The AR1* head above the latent cut is ``Conv1x1 (320->1280) -> BatchRenorm -> ReLU6 ->
GlobalAvgPool -> Linear``; the shallow head is ``Linear`` on pooled features. Each layer is a
small object with an explicit ``forward`` and a hand-written ``backward`` (no autograd engine),
written for a small CPU:

- channels-last: the last axis is the channel axis, so a 1x1 convolution is one matmul on the
  ``(N*H*W, C)`` view of its input;
- the math keeps the dtype of the parameters and inputs (float32 on the device, float64 in the
  gradient checks); nothing inside casts to a fixed dtype;
- ``forward(x, train=True)`` keeps what ``backward`` needs (references, not copies);
  ``train=False`` keeps nothing, and a ``backward`` after it raises ``RuntimeError``;
- parameters, gradients and buffers are updated in place (``backward``, :class:`SGD`,
  ``load_state_dict``), so code that holds a reference to an array always sees its current value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from numpy.typing import DTypeLike

from edge_cl.errors import FrameError


def _check_state(
    owner: str, expected: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray]
) -> None:
    """``ValueError`` unless ``state`` has exactly the expected keys, shapes and finite numbers."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{owner} state does not fit: missing keys {missing}, unexpected keys {unexpected}"
        )
    for key, shape in expected.items():
        value = np.asarray(state[key])
        if value.shape != shape:
            raise ValueError(f"{owner} state {key!r} has shape {value.shape}, expected {shape}")
        if value.dtype.kind not in "fiu" or not np.isfinite(value).all():
            raise ValueError(f"{owner} state {key!r} must hold finite numbers")


class Layer:
    """Base class: ``params`` (trained), ``grads`` (same keys and shapes), ``buffers`` (not
    trained, e.g. running statistics) and ``scalars`` (names of float attributes saved in
    ``state_dict`` as 0-d arrays). Stateless layers leave them empty.

    >>> layer = ReLU6()
    >>> layer.forward(np.array([-1.0, 3.0, 9.0]), train=True).tolist()
    [0.0, 3.0, 6.0]
    >>> layer.backward(np.ones(3)).tolist()
    [0.0, 1.0, 0.0]
    >>> layer.state_dict()
    {}
    """

    scalars: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """The layer's output; ``train=True`` also keeps what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Fill ``grads`` from ``dy`` = d(loss)/d(output) of the last forward; return d(loss)/dx."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the output for an input of ``input_shape`` (elementwise layers keep it)."""
        return input_shape

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward FLOPs for an input of ``input_shape`` (a multiply-add counts 2)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the params, buffers and scalars: everything a checkpoint must restore."""
        state = {k: v.copy() for k, v in {**self.params, **self.buffers}.items()}
        state.update({k: np.array(float(getattr(self, k))) for k in self.scalars})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` in place; if it does not fit, ``ValueError`` and no change."""
        _check_state(type(self).__name__, self._state_shapes(), state)
        self._set_state(state)

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {k: v.shape for k, v in {**self.params, **self.buffers}.items()}
        shapes.update({k: () for k in self.scalars})
        return shapes

    def _set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for key, array in {**self.params, **self.buffers}.items():
            array[...] = state[key]
        for key in self.scalars:
            setattr(self, key, float(state[key]))

    @staticmethod
    def _no_cache(name: str) -> RuntimeError:
        return RuntimeError(
            f"{name}.backward needs a forward(x, train=True) first (one backward per forward)"
        )


class Linear(Layer):
    """``y = x @ weight (+ bias)`` over the last axis; ``weight`` is ``(cin, cout)``.

    ``weight`` (and ``bias`` if it is an array) is copied into a new array of ``dtype``; without
    it the weight is LeCun-normal (std ``sqrt(1 / cin)``) from ``rng`` (default: seed 0, so runs
    repeat). ``bias=True`` adds a zero bias, ``bias=False`` none. ``input_grad=False`` skips the
    input gradient in ``backward`` (a third of the layer's training FLOPs) for a first trained
    layer whose input is frozen: ``backward`` then returns an empty array.

    >>> fc = Linear(3, 2, weight=np.ones((3, 2)), bias=True)
    >>> y = fc.forward(np.array([[1.0, 2.0, 3.0]], np.float32), train=True)
    >>> y.tolist(), y.dtype
    ([[6.0, 6.0]], dtype('float32'))
    >>> fc.backward(np.array([[1.0, 0.0]], np.float32)).tolist()
    [[1.0, 1.0, 1.0]]
    >>> fc.grads["weight"][:, 0].tolist(), fc.grads["bias"].tolist()
    ([1.0, 2.0, 3.0], [1.0, 0.0])
    """

    init_gain: ClassVar[float] = 1.0

    def __init__(
        self,
        cin: int,
        cout: int,
        weight: np.ndarray | None = None,
        bias: bool | np.ndarray = False,
        rng: np.random.Generator | None = None,
        dtype: DTypeLike = np.float32,
        input_grad: bool = True,
    ) -> None:
        super().__init__()
        if cin < 1 or cout < 0:
            raise ValueError(f"need cin >= 1 and cout >= 0, got cin={cin}, cout={cout}")
        self.cin, self.cout = cin, cout
        self.input_grad = input_grad
        if weight is None:
            rng = np.random.default_rng(0) if rng is None else rng
            std = math.sqrt(self.init_gain / cin)
            weight = rng.standard_normal((cin, cout)) * std
        self.params["weight"] = np.array(weight, dtype=dtype, order="C")
        if isinstance(bias, np.ndarray):
            self.params["bias"] = np.array(bias, dtype=dtype)
        elif bias:
            self.params["bias"] = np.zeros(cout, dtype)
        for name, shape in (("weight", (cin, cout)), ("bias", (cout,))):
            if name in self.params and self.params[name].shape != shape:
                got = self.params[name].shape
                raise ValueError(f"{type(self).__name__} {name} must be {shape}, got {got}")
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x: np.ndarray | None = None

    def _check(self, x: np.ndarray) -> None:
        if x.ndim < 2 or x.shape[-1] != self.cin:
            raise FrameError(
                f"{type(self).__name__} takes (..., {self.cin}) inputs, got shape {x.shape}"
            )

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """``x @ weight (+ bias)`` as one matmul on the ``(rows, cin)`` view of ``x``."""
        self._check(x)
        x2 = x.reshape(-1, self.cin)
        y = x2 @ self.params["weight"]
        if "bias" in self.params:
            y += self.params["bias"]
        self._x = x2 if train else None
        out: np.ndarray = y.reshape(*x.shape[:-1], self.cout)
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``grads = x^T dy`` (and the column sums of ``dy``); returns ``dy @ weight^T`` (empty
        with ``input_grad=False``)."""
        if self._x is None:
            raise self._no_cache(type(self).__name__)
        dy2 = dy.reshape(-1, self.cout)
        np.matmul(self._x.T, dy2, out=self.grads["weight"])
        if "bias" in self.grads:
            np.sum(dy2, axis=0, out=self.grads["bias"])
        if not self.input_grad:
            return np.empty(0, dy.dtype)
        dx: np.ndarray = (dy2 @ self.params["weight"].T).reshape(*dy.shape[:-1], self.cin)
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(..., cout)``."""
        return (*input_shape[:-1], self.cout)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward: ``2 * rows * cin * cout``, plus ``rows * cout`` for the bias."""
        rows = math.prod(input_shape[:-1])
        return rows * self.cout * (2 * self.cin + ("bias" in self.params))


class Conv1x1(Linear):
    """1x1 convolution on channels-last ``(N, H, W, cin)`` input, no bias: one matmul.

    ``weight`` is ``(cin, cout)`` (a PyTorch ``(cout, cin, 1, 1)`` kernel, squeezed and
    transposed); without it the weight is He-normal (std ``sqrt(2 / cin)``) from ``rng``.

    >>> conv = Conv1x1(320, 1280, rng=np.random.default_rng(0))
    >>> y = conv.forward(np.ones((2, 4, 4, 320), np.float32), train=False)
    >>> y.shape, y.dtype
    ((2, 4, 4, 1280), dtype('float32'))
    >>> conv.flops((2, 4, 4, 320)) == 2 * 32 * 320 * 1280
    True
    """

    init_gain: ClassVar[float] = 2.0

    def __init__(
        self,
        cin: int,
        cout: int,
        weight: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        dtype: DTypeLike = np.float32,
        input_grad: bool = True,
    ) -> None:
        super().__init__(
            cin, cout, weight=weight, bias=False, rng=rng, dtype=dtype, input_grad=input_grad
        )

    def _check(self, x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[-1] != self.cin:
            raise FrameError(f"Conv1x1 takes (N, H, W, {self.cin}) inputs, got shape {x.shape}")


class BatchRenorm(Layer):
    """Batch Renormalization (Ioffe 2017) over every axis but the last (the channels).

    Training normalises with the batch statistics, corrected towards the running ones:
    ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / running_std, 1/r_max,
    r_max)`` and ``d = clip((mu_B - running_mean) / running_std, -d_max, d_max)`` held constant
    in the backward pass, then ``y = gamma * x_hat + beta``. So small, non-i.i.d. batches do not
    drag the layer away from the statistics it is evaluated with; ``r_max=1, d_max=0`` is plain
    batch norm. After each training batch the running statistics move by ``momentum`` and, if
    ``ramp_per_sample > 0``, ``r_max`` and ``d_max`` grow by ``ramp_per_sample * N`` up to
    ``r_max_limit`` and ``d_max_limit`` (AR1* ramps them during its first batch). Evaluation is
    ``(x - running_mean) / running_std * gamma + beta``.

    ``running_std`` is ``sqrt(running_var + eps)``. ``r_max``, ``d_max``, ``momentum`` and
    ``ramp_per_sample`` are plain attributes to change between batches; ``state_dict`` holds
    ``r_max``, ``d_max`` and ``eps`` as 0-d arrays. Given arrays are copied as ``dtype``.
    ``inplace=True`` normalises in the input array itself (one activation less in memory) when
    the input is the previous layer's fresh output.

    >>> bn = BatchRenorm(2, running_var=np.array([3.999, 0.999]))  # running_std (2, 1)
    >>> x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    >>> bn.forward(x, train=False).round(3).tolist()
    [[0.0, 1.0], [1.0, 3.0]]
    >>> bn.forward(x, train=True).round(3).tolist()  # r_max=1, d_max=0: batch norm
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> bn.running_mean.astype(float).round(4).tolist()  # 1% of the way to the batch mean
    [0.01, 0.02]
    """

    scalars: ClassVar[tuple[str, ...]] = ("r_max", "d_max", "eps")

    def __init__(
        self,
        channels: int,
        gamma: np.ndarray | None = None,
        beta: np.ndarray | None = None,
        running_mean: np.ndarray | None = None,
        running_var: np.ndarray | None = None,
        eps: float = 1e-3,
        momentum: float = 0.01,
        r_max: float = 1.0,
        d_max: float = 0.0,
        r_max_limit: float = 1.25,
        d_max_limit: float = 0.5,
        ramp_per_sample: float = 0.0,
        dtype: DTypeLike = np.float32,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        if eps <= 0 or not 0 <= momentum <= 1 or r_max < 1 or d_max < 0 or ramp_per_sample < 0:
            raise ValueError(
                "BatchRenorm needs eps > 0, 0 <= momentum <= 1, r_max >= 1, d_max >= 0 and "
                f"ramp_per_sample >= 0, got eps={eps}, momentum={momentum}, r_max={r_max}, "
                f"d_max={d_max}, ramp_per_sample={ramp_per_sample}"
            )
        self.channels = channels
        self.inplace = inplace
        self.eps, self.momentum = float(eps), float(momentum)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.r_max_limit, self.d_max_limit = float(r_max_limit), float(d_max_limit)
        self.ramp_per_sample = float(ramp_per_sample)
        given = {
            "gamma": gamma,
            "beta": beta,
            "running_mean": running_mean,
            "running_var": running_var,
        }
        arrays = {}
        for name, value in given.items():
            default = 1.0 if name in ("gamma", "running_var") else 0.0
            a = np.full(channels, default, dtype) if value is None else np.array(value, dtype)
            if a.shape != (channels,):
                raise ValueError(f"BatchRenorm {name} must be ({channels},), got {a.shape}")
            arrays[name] = a
        if (arrays["running_var"] < 0).any():
            raise ValueError("BatchRenorm running_var must be >= 0")
        self.params = {"gamma": arrays["gamma"], "beta": arrays["beta"]}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": arrays["running_mean"],
            "running_std": np.sqrt(arrays["running_var"] + self.eps),
        }
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def running_mean(self) -> np.ndarray:
        """The running mean per channel (the buffer itself, updated in place)."""
        return self.buffers["running_mean"]

    @property
    def running_std(self) -> np.ndarray:
        """The running ``sqrt(var + eps)`` per channel (the buffer itself, updated in place)."""
        return self.buffers["running_std"]

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """Renormalise with batch statistics (``train``) or with the running ones."""
        if x.ndim < 2 or x.shape[-1] != self.channels:
            raise FrameError(f"BatchRenorm takes (..., {self.channels}) inputs, got {x.shape}")
        x2 = x.reshape(-1, self.channels)
        gamma, beta = self.params["gamma"], self.params["beta"]
        mean, std = self.running_mean, self.running_std
        if not train:
            self._cache = None
            scale = gamma / std
            y: np.ndarray = np.multiply(x2, scale, out=x2 if self.inplace else None)
            y += beta - mean * scale
            return y.reshape(x.shape)
        rows = x2.shape[0]
        mu = x2.mean(axis=0)
        x_hat = np.subtract(x2, mu, out=x2 if self.inplace else None)
        sigma = np.sqrt(np.einsum("ij,ij->j", x_hat, x_hat) / rows + self.eps)
        r = np.clip(sigma / std, 1.0 / self.r_max, self.r_max)
        d = np.clip((mu - mean) / std, -self.d_max, self.d_max)
        x_hat /= sigma
        y = x_hat * (gamma * r)
        y += gamma * d + beta
        self._cache = (x_hat, sigma, r, d)
        mean += self.momentum * (mu - mean)
        std += self.momentum * (sigma - std)
        if self.ramp_per_sample > 0:
            step = self.ramp_per_sample * x.shape[0]
            self.r_max = max(self.r_max, min(self.r_max + step, self.r_max_limit))
            self.d_max = max(self.d_max, min(self.d_max + step, self.d_max_limit))
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Exact gradient of the training forward for x, gamma and beta, with r and d constant.

        The input gradient is built in the cached ``x_hat`` (no new array), so each training
        forward allows one backward."""
        if self._cache is None:
            raise self._no_cache("BatchRenorm")
        x_hat, sigma, r, d = self._cache
        self._cache = None
        dy2 = dy.reshape(-1, self.channels)
        rows = dy2.shape[0]
        dbeta = dy2.sum(axis=0)
        dy_xhat = np.einsum("ij,ij->j", dy2, x_hat)
        self.grads["gamma"][...] = r * dy_xhat + d * dbeta
        self.grads["beta"][...] = dbeta
        dx: np.ndarray = x_hat
        dx *= -dy_xhat / rows
        dx += dy2
        dx -= dbeta / rows
        dx *= self.params["gamma"] * r / sigma
        return dx.reshape(dy.shape)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """One multiply-add per element (the folded scale and shift)."""
        return 2 * math.prod(input_shape)


class ReLU6(Layer):
    """``min(max(x, 0), 6)``: the activation of EfficientNet-Lite (kinks get gradient 0).

    ``inplace=True`` clips the input array itself instead of a copy, and ``backward`` writes the
    gradient into that same array (for an input that is the previous layer's fresh output, as in
    the learner's head: two activations less in memory).

    >>> ReLU6().forward(np.array([[-2.0, 0.5, 7.0]], np.float32), train=False).tolist()
    [[0.0, 0.5, 6.0]]
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """Clip to ``[0, 6]``; ``train`` keeps the output for the mask."""
        y: np.ndarray = np.clip(x, 0, 6, out=x if self.inplace else None)
        self._y = y if train else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy`` where ``0 < y < 6`` (the same as ``0 < x < 6``), else 0."""
        if self._y is None:
            raise self._no_cache("ReLU6")
        y, self._y = self._y, None
        mask = (y > 0) & (y < 6)
        dx: np.ndarray = np.multiply(dy, mask, out=y if self.inplace else None)
        return dx

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Two comparisons per element."""
        return 2 * math.prod(input_shape)


class GlobalAvgPool(Layer):
    """``(N, H, W, C) -> (N, C)``: the mean over the spatial axes.

    >>> pool = GlobalAvgPool()
    >>> pool.forward(np.arange(8.0).reshape(1, 2, 2, 2), train=True).tolist()
    [[3.0, 4.0]]
    >>> pool.backward(np.array([[4.0, 8.0]])).shape
    (1, 2, 2, 2)
    """

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """The spatial mean of each channel."""
        if x.ndim != 4:
            raise FrameError(f"GlobalAvgPool takes (N, H, W, C) inputs, got shape {x.shape}")
        self._shape = x.shape if train else None
        y: np.ndarray = x.mean(axis=(1, 2))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy / (H * W)`` at every position, as a read-only broadcast view (no copy)."""
        if self._shape is None:
            raise self._no_cache("GlobalAvgPool")
        n, h, w, c = self._shape
        return np.broadcast_to((dy / (h * w))[:, None, None, :], (n, h, w, c))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(N, C)``."""
        return (input_shape[0], input_shape[-1])

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """One addition per element."""
        return math.prod(input_shape)


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``params``, ``grads`` and ``buffers`` hold the layers' own arrays under ``"<index>.<name>"``
    (the layers update them in place, so these stay current); ``state_dict`` does the same.

    >>> head = Sequential([Conv1x1(8, 4), BatchRenorm(4), ReLU6(), GlobalAvgPool(), Linear(4, 3)])
    >>> y = head.forward(np.ones((2, 2, 2, 8), np.float32), train=True)
    >>> y.shape, head.backward(np.ones_like(y)).shape
    ((2, 3), (2, 2, 2, 8))
    >>> sorted(head.params)
    ['0.weight', '1.beta', '1.gamma', '4.weight']
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        super().__init__()
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            self.params.update({f"{i}.{k}": v for k, v in layer.params.items()})
            self.grads.update({f"{i}.{k}": v for k, v in layer.grads.items()})
            self.buffers.update({f"{i}.{k}": v for k, v in layer.buffers.items()})

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """Each layer's forward in turn."""
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Each layer's backward, last layer first."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The last layer's output shape."""
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """The sum of the layers' forward FLOPs."""
        total = 0
        for layer in self.layers:
            total += layer.flops(input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every layer's ``state_dict``, keys prefixed by the layer's index."""
        return {
            f"{i}.{k}": v
            for i, layer in enumerate(self.layers)
            for k, v in layer.state_dict().items()
        }

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            f"{i}.{k}": v
            for i, layer in enumerate(self.layers)
            for k, v in layer._state_shapes().items()
        }

    def _set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            layer._set_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably (the maximum is subtracted first).

    >>> softmax(np.array([[0.0, 1000.0], [0.0, 0.0]])).tolist()
    [[0.0, 1.0], [0.5, 0.5]]
    """
    e: np.ndarray = np.exp(logits - logits.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``(N, C)`` logits against integer labels, and its gradient.

    Uses log-sum-exp, so large logits neither overflow nor lose the loss.

    >>> loss, grad = softmax_cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))
    >>> round(loss, 6), grad.tolist()
    (0.693147, [[0.5, -0.5]])
    """
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(
            f"need (N, C) logits and N labels, N >= 1; got {logits.shape} and {labels.shape}"
        )
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be integers in [0, {logits.shape[1]})")
    rows = np.arange(len(labels))
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(log_norm - z[rows, labels]))
    z -= log_norm[:, None]
    grad = np.exp(z)
    grad[rows, labels] -= 1
    grad /= len(labels)
    return loss, grad


class SGD:
    """SGD with momentum and L2 weight decay, PyTorch's convention, updating params in place.

    ``v = momentum * v + (grad + weight_decay * param)``; ``param -= lr * v``. Velocities are
    keyed ``"<index of the layer in step's list>.<param name>"``, so pass the same list each
    step; :meth:`reset` drops them.

    >>> fc = Linear(1, 1, weight=np.array([[1.0]]))
    >>> opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.0)
    >>> fc.grads["weight"][...] = 1.0
    >>> opt.step([fc])  # v = 1
    >>> opt.step([fc])  # v = 0.9 * 1 + 1 = 1.9
    >>> round(float(fc.params["weight"][0, 0]), 6)
    0.71
    """

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                "SGD needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, layers: Sequence[Layer]) -> None:
        """Update every param of ``layers`` from its grad (filled by the last backward)."""
        for i, layer in enumerate(layers):
            for name, param in layer.params.items():
                key = f"{i}.{name}"
                v = self.velocity.get(key)
                if v is None:
                    v = self.velocity[key] = np.zeros_like(param)
                elif v.shape != param.shape:
                    raise ValueError(
                        f"SGD velocity {key!r} is {v.shape} but the param is {param.shape}: "
                        "pass the same layers each step, or reset()"
                    )
                v *= self.momentum
                v += layer.grads[name]
                if self.weight_decay:
                    v += self.weight_decay * param
                param -= self.lr * v

    def reset(self) -> None:
        """Forget the velocities (the next step starts from rest)."""
        self.velocity = {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """lr, momentum, weight_decay as 0-d arrays and copies of the velocities."""
        state = {
            "lr": np.array(self.lr),
            "momentum": np.array(self.momentum),
            "weight_decay": np.array(self.weight_decay),
        }
        state.update({f"velocity.{k}": v.copy() for k, v in self.velocity.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; ``ValueError`` (and no change) if it does not fit."""
        hyper = {"lr": (), "momentum": (), "weight_decay": ()}
        velocity = {k: v for k, v in state.items() if k.startswith("velocity.")}
        rest = {k: v for k, v in state.items() if k not in velocity}
        _check_state("SGD", hyper, rest)
        for key, v in velocity.items():
            _check_state("SGD", {key: np.shape(v)}, {key: v})
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.velocity = {k[len("velocity.") :]: np.array(v) for k, v in velocity.items()}

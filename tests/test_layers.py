"""The numpy head layers: gradients against finite differences, Batch Renormalization's
statistics and clipping, checkpoints, SGD by hand, and the float32 path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge_cl.errors import FrameError
from edge_cl.learner.layers import (
    SGD,
    BatchRenorm,
    Conv1x1,
    GlobalAvgPool,
    Layer,
    Linear,
    ReLU6,
    Sequential,
    softmax,
    softmax_cross_entropy,
)

F64 = np.float64
EPS = 1e-3


def numeric_grad(f: Callable[[], float], a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of ``f`` with respect to ``a`` (perturbed in place)."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        up = f()
        a[idx] = old - h
        down = f()
        a[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    assert np.linalg.norm(numeric) > 1e-6, "a gradient check on a zero gradient proves nothing"
    return float(np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic + numeric))


def check_layer_gradients(layer: Layer, x: np.ndarray, seed: int = 0) -> None:
    """Input and param gradients of ``sum(layer(x) * dy)`` against finite differences."""
    dy = np.random.default_rng(seed).normal(size=layer.forward(x, train=True).shape)
    dx = layer.backward(dy)
    grads = {k: g.copy() for k, g in layer.grads.items()}

    def loss() -> float:
        return float(np.sum(layer.forward(x, train=True) * dy))

    assert dx.shape == x.shape
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    assert grads.keys() == layer.params.keys()
    for name, param in layer.params.items():
        assert grads[name].shape == param.shape
        assert rel_error(grads[name], numeric_grad(loss, param)) < 1e-7, name


def brn_reference(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, r: np.ndarray, d: np.ndarray
) -> np.ndarray:
    """Batch Renormalization's training forward written out, with r and d given constants."""
    x2 = x.reshape(-1, x.shape[-1])
    mu = x2.mean(axis=0)
    sigma = np.sqrt(((x2 - mu) ** 2).mean(axis=0) + EPS)
    return (((x2 - mu) / sigma * r + d) * gamma + beta).reshape(x.shape)


def clipping_brn(h: np.ndarray, **kwargs: np.ndarray) -> tuple[BatchRenorm, np.ndarray, np.ndarray]:
    """A BatchRenorm (r_max 1.25, d_max 0.5) whose running statistics, against the batch ``h``,
    make r and d clip in some channels and not in others; also the r and d it must use."""
    h2 = h.reshape(-1, 6)
    mu, sigma = h2.mean(axis=0), np.sqrt(h2.var(axis=0) + EPS)
    ratio = np.array([2.0, 1.1, 0.5, 0.95, 1.2, 0.7])  # sigma_B / running_std
    offset = np.array([0.1, 1.0, -0.3, -2.0, 0.4, -0.6])  # (mu_B - running_mean) / running_std
    std = sigma / ratio
    bn = BatchRenorm(
        6,
        running_mean=mu - offset * std,
        running_var=std**2 - EPS,
        eps=EPS,
        r_max=1.25,
        d_max=0.5,
        dtype=F64,
        **kwargs,
    )
    np.testing.assert_allclose(bn.running_std, std, rtol=1e-12)
    r, d = np.clip(ratio, 0.8, 1.25), np.clip(offset, -0.5, 0.5)
    assert 0 < np.sum(r != ratio) < 6 and 0 < np.sum(d != offset) < 6  # both clip, partly
    return bn, r, d


def test_linear_and_conv1x1_gradients() -> None:
    rng = np.random.default_rng(0)
    fc = Linear(4, 3, bias=rng.normal(size=3), rng=rng, dtype=F64)
    check_layer_gradients(fc, rng.normal(size=(2, 3, 4)))  # any leading axes
    conv = Conv1x1(5, 3, rng=rng, dtype=F64)
    check_layer_gradients(conv, rng.normal(size=(2, 2, 3, 5)))
    x = rng.normal(size=(2, 2, 3, 5))
    expected = np.einsum("nhwc,co->nhwo", x, conv.params["weight"])
    np.testing.assert_allclose(conv.forward(x, train=False), expected, rtol=1e-12)


def test_frozen_input_skips_the_input_gradient_and_keeps_the_weight_gradient() -> None:
    rng = np.random.default_rng(5)
    weight, x = rng.normal(size=(5, 3)), rng.normal(size=(2, 2, 3, 5))
    dy = rng.normal(size=(2, 2, 3, 3))
    full, frozen = (Conv1x1(5, 3, weight=weight, dtype=F64, input_grad=g) for g in (True, False))
    for conv in (full, frozen):
        conv.forward(x, train=True)
    assert full.backward(dy).shape == x.shape
    assert frozen.backward(dy).size == 0
    np.testing.assert_array_equal(frozen.grads["weight"], full.grads["weight"])


def test_inplace_relu6_clips_its_input_and_has_the_same_gradient() -> None:
    rng = np.random.default_rng(6)
    x = rng.uniform(-2.0, 8.0, size=(3, 4))
    dy = rng.normal(size=x.shape)
    copy_relu, inplace_relu = ReLU6(), ReLU6(inplace=True)
    y = copy_relu.forward(x, train=True)
    expected = copy_relu.backward(dy)
    x2 = x.copy()
    y2 = inplace_relu.forward(x2, train=True)
    assert y2 is x2 and (x < 0).any() and not (x2 < 0).any()  # copy_relu left x alone
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(inplace_relu.backward(dy), expected)


def test_inplace_batch_renorm_matches_the_copying_one() -> None:
    rng = np.random.default_rng(8)
    x, dy = rng.normal(2.0, 3.0, size=(6, 4)), rng.normal(size=(6, 4))
    layers = [BatchRenorm(4, r_max=1.25, d_max=0.5, dtype=F64, inplace=i) for i in (False, True)]
    outs = []
    for bn in layers:
        train, grad = bn.forward(x.copy(), train=True), bn.backward(dy)
        outs.append((train, grad, bn.forward(x.copy(), train=False)))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(layers[0].running_mean, layers[1].running_mean, rtol=1e-12)


def test_each_training_forward_allows_one_backward() -> None:
    x = np.random.default_rng(7).normal(size=(4, 3))
    for layer in (BatchRenorm(3, dtype=F64), ReLU6()):
        y = layer.forward(x, train=True)
        layer.backward(np.ones_like(y))
        with pytest.raises(RuntimeError, match="train=True"):
            layer.backward(np.ones_like(y))


def test_relu6_and_pool_gradients() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-2.0, 8.0, size=(3, 2, 2, 4))
    x[np.abs(x) < 0.05] = 0.5  # keep finite differences off the kinks
    x[np.abs(x - 6) < 0.05] = 5.5
    assert (x < 0).any() and (x > 6).any()
    check_layer_gradients(ReLU6(), x)
    check_layer_gradients(GlobalAvgPool(), x)
    np.testing.assert_array_equal(ReLU6().forward(x, train=False), np.clip(x, 0, 6))
    np.testing.assert_allclose(GlobalAvgPool().forward(x, train=False), x.mean(axis=(1, 2)))


def test_batch_renorm_gradients_with_r_and_d_clipping_in_some_channels() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, size=(3, 2, 2, 6))
    bn, r, d = clipping_brn(x, gamma=rng.uniform(0.5, 2, 6), beta=rng.normal(size=6))
    gamma, beta = bn.params["gamma"], bn.params["beta"]
    y = bn.forward(x, train=True)
    np.testing.assert_allclose(y, brn_reference(x, gamma, beta, r, d), rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=y.shape)
    dx = bn.backward(dy)

    def loss() -> float:
        return float(np.sum(brn_reference(x, gamma, beta, r, d) * dy))

    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    assert rel_error(bn.grads["gamma"], numeric_grad(loss, gamma)) < 1e-7
    assert rel_error(bn.grads["beta"], numeric_grad(loss, beta)) < 1e-7


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 2, 5)])
def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    bn = BatchRenorm(
        5,
        gamma=gamma,
        beta=beta,
        running_mean=rng.normal(5.0, 1.0, size=5),  # far from the batch statistics
        running_var=rng.uniform(10, 20, size=5),
        eps=EPS,
        dtype=F64,
    )
    axes = tuple(range(len(shape) - 1))
    plain = (x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + EPS) * gamma + beta
    np.testing.assert_allclose(bn.forward(x, train=True), plain, rtol=1e-12, atol=1e-12)
    check_layer_gradients(bn, x)  # r and d are constant here, so the real forward is checked


def test_full_stack_gradients_through_clipping_batch_renorm() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 2, 2, 5))
    labels = np.array([0, 2, 1, 2])
    conv = Conv1x1(5, 6, rng=rng, dtype=F64)
    gamma = np.array([3.0, 1.0, 4.0, 2.0, 1.5, 5.0])
    beta = np.array([2.0, 0.5, 3.0, 1.0, -0.5, 2.0])
    bn, r, d = clipping_brn(conv.forward(x, train=False), gamma=gamma, beta=beta)
    relu, pool, fc = ReLU6(), GlobalAvgPool(), Linear(6, 3, rng=rng, dtype=F64)
    head = Sequential([conv, bn, relu, pool, fc])

    def reference_loss() -> float:
        z = brn_reference(conv.forward(x, False), bn.params["gamma"], bn.params["beta"], r, d)
        logits = fc.forward(pool.forward(relu.forward(z, False), False), False)
        return softmax_cross_entropy(logits, labels)[0]

    z = brn_reference(conv.forward(x, False), bn.params["gamma"], bn.params["beta"], r, d)
    assert (z < 0).any() and (z > 6).any() and ((z > 0) & (z < 6)).any()
    assert np.minimum(np.abs(z), np.abs(z - 6)).min() > 1e-3  # no kink within reach of h

    loss, dlogits = softmax_cross_entropy(head.forward(x, train=True), labels)
    dx = head.backward(dlogits)
    assert loss == pytest.approx(reference_loss(), rel=1e-12)
    grads = {k: g.copy() for k, g in head.grads.items()}
    assert sorted(grads) == ["0.weight", "1.beta", "1.gamma", "4.weight"]
    assert rel_error(dx, numeric_grad(reference_loss, x)) < 1e-6
    for key, param in head.params.items():
        assert rel_error(grads[key], numeric_grad(reference_loss, param)) < 1e-6, key


def test_softmax_cross_entropy_is_exact_stable_and_checks_labels() -> None:
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(size=(5, 4)), np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(5), labels]).mean(), rel=1e-12)
    np.testing.assert_allclose(softmax(logits), p, rtol=1e-12)
    numeric = numeric_grad(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    assert rel_error(grad, numeric) < 1e-7

    big_loss, big_grad = softmax_cross_entropy(logits * 1e4, labels)  # exp would overflow
    assert np.isfinite(big_loss) and big_loss > 1e3 and np.isfinite(big_grad).all()
    shifted = softmax_cross_entropy(logits + 1e4, labels)
    assert shifted[0] == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(shifted[1], grad, atol=1e-9)
    assert np.isfinite(softmax(logits * 1e4)).all()

    for bad in ([0, 3, 1, 1, 4], [0, -1, 1, 1, 2], [0.0, 3.0, 1.0, 1.0, 2.0], [0, 1]):
        with pytest.raises(ValueError, match="labels"):
            softmax_cross_entropy(logits, np.array(bad))


def test_eval_uses_the_running_statistics_and_keeps_no_cache() -> None:
    rng = np.random.default_rng(6)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    gamma, beta = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    bn = BatchRenorm(4, gamma, beta, mean, var, eps=EPS, r_max=1.25, d_max=0.5, dtype=F64)
    x = rng.normal(3.0, 2.0, size=(5, 2, 2, 4))
    y = bn.forward(x, train=False)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + EPS) * gamma + beta, rtol=1e-12)
    np.testing.assert_array_equal(bn.forward(x[:1], train=False), y[:1])  # no batch statistics
    np.testing.assert_array_equal(bn.running_mean, mean)
    np.testing.assert_allclose(bn.running_std, np.sqrt(var + EPS), rtol=1e-15)
    with pytest.raises(RuntimeError, match="train=True"):
        bn.backward(y)
    for layer in (Conv1x1(4, 2), ReLU6(), GlobalAvgPool(), Linear(4, 2)):
        layer.forward(x.astype(np.float32), train=False)
        with pytest.raises(RuntimeError, match="train=True"):
            layer.backward(np.ones((1,), np.float32))


def test_running_statistics_update_and_r_max_d_max_ramp() -> None:
    rng = np.random.default_rng(7)
    mean0, var0 = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    bn = BatchRenorm(
        3, running_mean=mean0, running_var=var0, eps=EPS, momentum=0.1, ramp_per_sample=0.01,
        dtype=F64,
    )  # fmt: skip
    x = rng.normal(2.0, 3.0, size=(8, 2, 2, 3))  # 8 samples: each batch ramps by 0.08
    mu, sigma = x.mean(axis=(0, 1, 2)), np.sqrt(x.var(axis=(0, 1, 2)) + EPS)
    plain = (x - mu) / sigma
    np.testing.assert_allclose(bn.forward(x, train=True), plain, rtol=1e-12, atol=1e-12)
    std0 = np.sqrt(var0 + EPS)
    np.testing.assert_allclose(bn.running_mean, mean0 + 0.1 * (mu - mean0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_std, std0 + 0.1 * (sigma - std0), rtol=1e-12)
    assert (bn.r_max, bn.d_max) == pytest.approx((1.08, 0.08))

    seen = [(bn.r_max, bn.d_max)]
    for _ in range(7):
        bn.forward(x, train=True)
        seen.append((bn.r_max, bn.d_max))
    expected = [(min(1 + 0.08 * k, 1.25), min(0.08 * k, 0.5)) for k in range(1, 9)]
    assert seen == [pytest.approx(e) for e in expected]
    assert seen[-1] == (1.25, 0.5)  # exactly the limits

    bn.ramp_per_sample = 0.0
    bn.r_max, bn.d_max = 1.1, 0.2
    bn.forward(x, train=True)
    bn.forward(x, train=False)
    assert (bn.r_max, bn.d_max) == (1.1, 0.2)


def make_head(seed: int, dtype: type[np.floating] = np.float32) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        [
            Conv1x1(8, 6, rng=rng, dtype=dtype),
            BatchRenorm(6, ramp_per_sample=0.01, dtype=dtype),
            ReLU6(),
            GlobalAvgPool(),
            Linear(6, 3, rng=rng, dtype=dtype),
        ]
    )


def train(head: Sequential, opt: SGD, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.normal(size=(4, 2, 2, 8)).astype(np.float32)
        _, dlogits = softmax_cross_entropy(head.forward(x, True), rng.integers(0, 3, 4))
        head.backward(dlogits)
        opt.step([head])


def test_state_dict_round_trip_restores_exact_outputs() -> None:
    head, opt = make_head(0), SGD(0.1)
    train(head, opt, 3, seed=1)
    bn = head.layers[1]
    assert isinstance(bn, BatchRenorm) and bn.r_max > 1 and bn.d_max > 0
    state = head.state_dict()
    assert state["1.r_max"].shape == () and float(state["1.r_max"]) == bn.r_max
    assert {k for k in state if k.startswith("1.")} == {
        f"1.{k}" for k in ("gamma", "beta", "running_mean", "running_std", "r_max", "d_max", "eps")
    }
    state["0.weight"][...] = 0.0  # a copy: the head is untouched
    assert head.params["0.weight"].any()
    state = head.state_dict()

    clone, clone_opt = make_head(99), SGD(0.5, momentum=0.0, weight_decay=0.0)
    weight = clone.params["0.weight"]
    assert not np.array_equal(weight, head.params["0.weight"])
    clone.load_state_dict(state)
    clone_opt.load_state_dict(opt.state_dict())
    assert clone.params["0.weight"] is weight  # loaded in place
    clone_bn = clone.layers[1]
    assert isinstance(clone_bn, BatchRenorm)
    assert (clone_bn.r_max, clone_bn.d_max) == (bn.r_max, bn.d_max)
    x = np.random.default_rng(2).normal(size=(5, 2, 2, 8)).astype(np.float32)
    np.testing.assert_array_equal(clone.forward(x, False), head.forward(x, False))
    train(head, opt, 2, seed=3)  # continued training is identical too
    train(clone, clone_opt, 2, seed=3)
    np.testing.assert_array_equal(clone.forward(x, True), head.forward(x, True))
    np.testing.assert_array_equal(clone.forward(x, False), head.forward(x, False))


def test_load_state_dict_refuses_what_does_not_fit_and_changes_nothing() -> None:
    conv = Conv1x1(4, 3)
    with pytest.raises(ValueError, match=r"'weight' has shape \(3, 4\), expected \(4, 3\)"):
        conv.load_state_dict({"weight": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"missing keys \['weight'\]"):
        conv.load_state_dict({})
    with pytest.raises(ValueError, match=r"unexpected keys \['bias'\]"):
        conv.load_state_dict({"weight": np.zeros((4, 3)), "bias": np.zeros(3)})
    with pytest.raises(ValueError, match="finite"):
        conv.load_state_dict({"weight": np.full((4, 3), np.nan)})
    with pytest.raises(ValueError, match="unexpected"):
        ReLU6().load_state_dict({"weight": np.zeros(1)})
    bad_scalar = {**BatchRenorm(3).state_dict(), "r_max": np.array([1.25])}
    with pytest.raises(ValueError, match="'r_max' has shape"):
        BatchRenorm(3).load_state_dict(bad_scalar)

    head = make_head(0)
    before = head.state_dict()
    state = make_head(1).state_dict()
    state["4.weight"] = np.zeros((6, 4), np.float32)  # the last layer does not fit
    with pytest.raises(ValueError, match=r"4\.weight"):
        head.load_state_dict(state)
    for key, value in head.state_dict().items():  # not even the layers that did fit
        np.testing.assert_array_equal(value, before[key])


def test_sgd_step_matches_momentum_and_weight_decay_by_hand() -> None:
    fc = Linear(2, 1, weight=np.array([[1.0], [2.0]]), bias=np.array([0.5]), dtype=F64)
    weight, bias = fc.params["weight"], fc.params["bias"]
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    fc.grads["weight"][...] = [[0.5], [-1.0]]
    fc.grads["bias"][...] = [0.0]
    opt.step([fc])  # v = g + wd * w = (0.51, -0.98); w -= 0.1 * v
    np.testing.assert_allclose(weight.ravel(), [0.949, 2.098], rtol=1e-12)
    np.testing.assert_allclose(bias, [0.5 - 0.1 * 0.005], rtol=1e-12)
    fc.grads["weight"][...] = [[0.2], [0.4]]
    opt.step([fc])  # v = 0.9 * (0.51, -0.98) + (0.2, 0.4) + 0.01 * (0.949, 2.098)
    np.testing.assert_allclose(weight.ravel(), [0.882151, 2.144102], rtol=1e-12)
    assert fc.params["weight"] is weight and fc.params["bias"] is bias  # in place

    resumed = Linear(2, 1, weight=weight, bias=bias, dtype=F64)
    again = SGD(1.0, momentum=0.0, weight_decay=0.0)
    again.load_state_dict(opt.state_dict())
    assert (again.lr, again.momentum, again.weight_decay) == (0.1, 0.9, 0.01)
    for layer, o in ((fc, opt), (resumed, again)):
        layer.grads["weight"][...] = [[1.0], [1.0]]
        o.step([layer])
    np.testing.assert_array_equal(resumed.params["weight"], weight)

    opt.reset()
    before = weight.copy()
    opt.step([fc])  # from rest: v = g + wd * w
    np.testing.assert_allclose(weight, before - 0.1 * (1.0 + 0.01 * before), rtol=1e-12)

    with pytest.raises(ValueError, match="velocity"):
        opt.step([Linear(3, 1)])
    with pytest.raises(ValueError, match="missing keys"):
        again.load_state_dict({"lr": np.array(0.1)})


def test_float32_stays_float32_end_to_end() -> None:
    head, opt = make_head(0), SGD(0.01)
    x = np.random.default_rng(0).normal(size=(4, 2, 2, 8)).astype(np.float32)
    logits = head.forward(x, train=True)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))
    dx = head.backward(dlogits)
    opt.step([head])
    arrays = [logits, dlogits, dx, softmax(logits), head.forward(x, train=False)]
    arrays += [*head.params.values(), *head.grads.values(), *head.buffers.values()]
    arrays += list(opt.velocity.values())
    assert {a.dtype for a in arrays} == {np.dtype(np.float32)}
    assert isinstance(loss, float)


def test_sequential_flops_shapes_and_input_checks() -> None:
    head = make_head(0)
    shape = (2, 4, 4, 8)
    rows = 2 * 4 * 4
    conv, brn, relu, pool, fc = (
        2 * rows * 8 * 6,
        2 * rows * 6,
        2 * rows * 6,
        rows * 6,
        2 * 2 * 6 * 3,
    )
    assert head.flops(shape) == conv + brn + relu + pool + fc
    assert head.output_shape(shape) == (2, 3)
    assert Linear(6, 3, bias=True).flops((2, 6)) == 2 * 2 * 6 * 3 + 2 * 3
    x = np.zeros(shape, np.float32)
    assert head.forward(x, train=False).shape == (2, 3)
    with pytest.raises(FrameError, match=r"\(N, H, W, 8\)"):
        head.forward(np.zeros((2, 4, 4, 7), np.float32), train=False)
    with pytest.raises(FrameError):
        GlobalAvgPool().forward(np.zeros((2, 6), np.float32), train=False)
    with pytest.raises(ValueError, match="weight must be"):
        Conv1x1(8, 6, weight=np.zeros((6, 8)))
    with pytest.raises(ValueError, match="gamma must be"):
        BatchRenorm(6, gamma=np.ones(5))

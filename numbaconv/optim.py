"""SGD and Adam with PyTorch's update formulas, updating parameters in place on their device.

An optimizer holds a ``dict[str, array]`` of parameters (e.g. ``model.named_params()``: the
model's own arrays, NumPy arrays or, after ``model.to("cuda")``, CUDA device arrays; build the
optimizer after the move) and ``step(grads)`` takes a dict of gradients with the same keys
and shapes on the same device (e.g. ``model.named_grads()`` after a backward). There is no
``zero_grad``: layers overwrite their gradients on every backward.

Updates run in place in the parameters' dtype: float32 stays float32. On the CPU, SGD's
update is one parallel pass per parameter (:mod:`numbaconv.kernels.cpu.optim`; its
parameters C-contiguous float32 or float64 arrays, as a model's are); Adam's temporaries
live in two scratch buffers per dtype (sized for the largest parameter) allocated on the
first step, so a step allocates no array as large as a parameter; on a GPU
each parameter takes one kernel launch (:mod:`numbaconv.kernels.cuda.ops`), and the state
(momentum buffers, Adam's moments) lives on the device with the parameters.

``state_dict()`` returns plain host arrays and scalars from either device
(``np.savez(path, **opt.state_dict())`` works, and ``load_state_dict(np.load(path))``
restores, onto the parameters' device); it holds the step count, the hyperparameters
(restored on load, as PyTorch does) and ``<buffer>.<param name>`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .devices import device_of, host_copy
from .kernels.cpu import optim as cpu_optim
from .kernels.cuda.device import is_device_array


def _cuda_ops():
    from .kernels.cuda import ops

    return ops

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    """Common parameter/gradient checks, scratch buffers and ``state_dict`` plumbing."""

    #: buffer names kept per parameter (``state_dict`` keys ``<buffer>.<param name>``)
    _buffers: tuple[str, ...] = ()
    #: hyperparameters saved in ``state_dict`` and their types
    _hyper: dict[str, type] = {}

    def __init__(self, params: Mapping[str, np.ndarray]):
        if not isinstance(params, Mapping):
            raise TypeError("params must be a dict of name -> numpy array (e.g. "
                            "model.named_params()), "
                            f"got {type(params).__name__}")
        if not params:
            raise ValueError("optimizer got an empty parameter dict")
        for name, p in params.items():
            if not (isinstance(p, np.ndarray) or is_device_array(p)) \
                    or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"parameter {name!r} must be a floating-point numpy array or "
                                f"CUDA device array, got {type(p).__name__} "
                                f"{getattr(p, 'dtype', '')}")
            if isinstance(p, np.ndarray) and not p.flags.writeable:
                raise ValueError(f"parameter {name!r} is read-only")
        self.params: dict[str, np.ndarray] = dict(params)
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self._buffers}
        self._scratch_bufs: dict[tuple[int, np.dtype], np.ndarray] = {}

    def _scratch(self, slot: int, like: np.ndarray) -> np.ndarray:
        key = (slot, like.dtype)
        buf = self._scratch_bufs.get(key)
        if buf is None:
            size = max(p.size for p in self.params.values() if p.dtype == like.dtype)
            buf = self._scratch_bufs[key] = np.empty(size, dtype=like.dtype)
        return buf[:like.size].reshape(like.shape)

    def _checked_grads(self, grads: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.step: gradients do not match the "
                             f"parameters (missing {missing}, unexpected {unexpected})")
        for name, p in self.params.items():
            if tuple(np.shape(grads[name])) != tuple(p.shape):
                raise ValueError(f"{type(self).__name__}.step: gradient {name!r} has shape "
                                 f"{tuple(np.shape(grads[name]))}, the parameter's is "
                                 f"{tuple(p.shape)}")
            if is_device_array(grads[name]) != is_device_array(p):
                raise TypeError(f"{type(self).__name__}.step: gradient {name!r} is a "
                                f"{type(grads[name]).__name__}, on another device than its "
                                f"parameter ({type(p).__name__})")
        return grads

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        state: dict = {"optimizer": type(self).__name__, "step": int(self.step_count)}
        for hyper in self._hyper:
            state[hyper] = getattr(self, hyper)
        for buffer, arrays in self.state.items():
            for name, array in arrays.items():
                state[f"{buffer}.{name}"] = host_copy(array)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output (a dict or an ``np.load`` of an ``.npz``).

        Every buffer must belong to a parameter of this optimizer and have its shape;
        otherwise ``ValueError`` names the offending keys and nothing changes.
        """
        keys = list(state.keys())
        kind = state["optimizer"] if "optimizer" in keys else type(self).__name__
        kind = str(np.asarray(kind).item()) if not isinstance(kind, str) else kind
        if kind != type(self).__name__:
            raise ValueError(f"state is for {kind}, not {type(self).__name__}")
        if "step" not in keys:
            raise ValueError("optimizer state has no 'step'")
        problems = []
        buffers: dict[str, dict[str, np.ndarray]] = {b: {} for b in self._buffers}
        for key in keys:
            if key in ("optimizer", "step") or key in self._hyper:
                continue
            buffer, _, name = key.partition(".")
            if buffer not in buffers or not name:
                problems.append(f"unexpected key {key!r}")
            elif name not in self.params:
                problems.append(f"{key!r} names no parameter of this optimizer")
            elif tuple(np.shape(state[key])) != tuple(self.params[name].shape):
                problems.append(f"{key!r} has shape {tuple(np.shape(state[key]))}, the "
                                f"parameter's is {tuple(self.params[name].shape)}")
            else:  # on the parameter's device
                param = self.params[name]
                buffers[buffer][name] = device_of(param).put(
                    np.array(host_copy(state[key]), dtype=param.dtype))
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        self.step_count = int(np.asarray(state["step"]).item())
        for hyper, cast in self._hyper.items():
            if hyper in keys:
                setattr(self, hyper, cast(np.asarray(state[hyper]).item()))
        self.state = buffers

    def __repr__(self) -> str:
        hypers = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hyper)
        return f"{type(self).__name__}({len(self.params)} params, {hypers})"


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) | buf (momentum != 0)
        p -= lr * g
    """

    _buffers = ("momentum_buffer",)
    _hyper = {"lr": float, "momentum": float, "dampening": float, "weight_decay": float,
              "nesterov": bool}

    def __init__(self, params: Mapping[str, np.ndarray], lr, momentum=0.0, weight_decay=0.0,
                 nesterov=False, *, dampening=0.0):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params)
        for name, p in self.params.items():
            if isinstance(p, np.ndarray) and (p.dtype not in (np.float32, np.float64)
                                              or not p.flags.c_contiguous):
                raise TypeError(f"SGD updates float32 or float64 C-contiguous parameters; "
                                f"{name!r} is {p.dtype}"
                                f"{'' if p.flags.c_contiguous else ', not C-contiguous'}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        grads = self._checked_grads(grads)
        buffers = self.state["momentum_buffer"]
        for name, p in self.params.items():
            buf, first = buffers.get(name), False
            if self.momentum != 0.0 and buf is None:  # on the parameter's device
                buf, first = device_of(p).zeros(p.shape, p.dtype), True
                buffers[name] = buf
            kernels = _cuda_ops() if is_device_array(p) else cpu_optim
            kernels.sgd_step(p, grads[name], buf, self.lr, self.momentum, self.weight_decay,
                             self.nesterov, self.dampening, first)
        self.step_count += 1


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, no amsgrad)::

        g = grad + weight_decay * p
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    _buffers = ("exp_avg", "exp_avg_sq")
    _hyper = {"lr": float, "beta1": float, "beta2": float, "eps": float, "weight_decay": float}

    def __init__(self, params: Mapping[str, np.ndarray], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0):
        beta1, beta2 = betas
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params)
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        grads = self._checked_grads(grads)
        t = self.step_count + 1
        bias_correction1 = 1.0 - self.beta1 ** t
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** t)
        step_size = self.lr / bias_correction1
        weight = 1.0 - self.beta1
        exp_avgs, exp_avg_sqs = self.state["exp_avg"], self.state["exp_avg_sq"]
        for name, p in self.params.items():
            if is_device_array(p):
                self._device_step(name, p, grads[name], t, exp_avgs, exp_avg_sqs)
                continue
            g = grads[name]
            s0, s1 = self._scratch(0, p), self._scratch(1, p)
            if self.weight_decay != 0.0:
                np.multiply(p, self.weight_decay, out=s0)
                s0 += g
                g = s0
            m = exp_avgs.get(name)
            if m is None:
                m = exp_avgs[name] = np.zeros_like(p)
                exp_avg_sqs[name] = np.zeros_like(p)
            v = exp_avg_sqs[name]
            # m.lerp_(g, weight), with torch's two formulas for small and large weights
            np.subtract(g, m, out=s1)
            if weight < 0.5:
                s1 *= weight
                m += s1
            else:
                s1 *= 1.0 - weight
                np.subtract(g, s1, out=m)
            # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            v *= self.beta2
            np.multiply(g, 1.0 - self.beta2, out=s1)
            s1 *= g
            v += s1
            # denom = sqrt(v) / bias_correction2_sqrt + eps; p.addcdiv_(m, denom, -step_size)
            np.sqrt(v, out=s1)
            s1 /= bias_correction2_sqrt
            s1 += self.eps
            np.multiply(m, step_size, out=s0)
            s0 /= s1
            p -= s0
        self.step_count = t

    def _device_step(self, name, p, grad, t, exp_avgs, exp_avg_sqs) -> None:
        m = exp_avgs.get(name)
        if m is None:
            m = exp_avgs[name] = device_of(p).zeros(p.shape, p.dtype)
            exp_avg_sqs[name] = device_of(p).zeros(p.shape, p.dtype)
        _cuda_ops().adam_step(p, grad, m, exp_avg_sqs[name], t, self.lr, self.beta1,
                              self.beta2, self.eps, self.weight_decay)

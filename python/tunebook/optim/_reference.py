"""The pure-torch reference implementation of every ``tunebook::`` op, single tensor.

Each function has the signature and the contract of the op of the same name (see the
comment block of ``csrc/ops.cpp``), written with plain torch ops one tensor at a time in
the params' "opmath" (float32, or float64 for float64 params: low-precision tensors are
widened, updated and rounded back once), in the same order as torch.optim's
``foreach=False`` implementations. It is the fallback when no compiler is available and,
for good, the oracle the compiled kernels are tested against.

It favours clarity over speed: the skip flag is read with one host sync per call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RULE_TORCH = 0
RULE_PLAYBOOK = 1
CLIP_EPS = 1e-6


def _lr(lr_tensor: Tensor | None, lr: float) -> float:
    return float(lr_tensor) if lr_tensor is not None else lr


def _skip(control: Tensor) -> bool:
    return bool(control[1] != 0)


def _widen(t: Tensor) -> Tensor:
    """A working copy in the opmath type (the tensor itself when it is of that type)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _write_back(dst: Tensor, src: Tensor) -> None:
    if dst.data_ptr() != src.data_ptr():
        dst.copy_(src)


def _grad(grad: Tensor, control: Tensor, maximize: bool) -> Tensor:
    g = _widen(grad) * control[0]
    return -g if maximize else g


def _store_unscaled_grads(grads: list[Tensor], grad_scale: Tensor | None) -> None:
    """torch's fused optimizers' conditional gradient store: grad = raw grad / scale."""
    if grad_scale is None:
        return
    for grad in grads:
        grad.copy_(_widen(grad) / grad_scale.to(_widen(grad).dtype))


def grad_sq_norm(grads: list[Tensor]) -> Tensor:
    """Sum of squares of all grads, accumulated in float64, as a 0-dim float32 tensor (inf
    when the sum exceeds the float32 maximum)."""
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for g in grads:
        total = total + g.double().square().sum()
    return total.float()


def step_control_(
    sq_norm: Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    control: Tensor,
    counters: Tensor,
    norm_log: Tensor,
    max_grad_norm: float | None,
    skip_nonfinite: bool,
) -> None:
    """Clip coefficient, skip flag, counters and norm log, on the device, without a sync."""
    device = control.device
    scale = (
        grad_scale.reshape(()).float()
        if grad_scale is not None
        else torch.ones((), device=device)
    )
    skip = torch.zeros((), dtype=torch.bool, device=device)
    if found_inf is not None:
        skip = skip | (found_inf.reshape(()) != 0)
    coef = torch.ones((), device=device)
    if sq_norm is not None:
        norm = sq_norm.reshape(()).float().sqrt() / scale
        if skip_nonfinite:
            skip = skip | ~torch.isfinite(norm)
        if max_grad_norm is not None:
            coef = torch.clamp(max_grad_norm / (norm + CLIP_EPS), max=1.0)
        if norm_log.numel() > 0:
            position = (counters[0] % norm_log.numel()).reshape(1)
            norm_log.index_copy_(0, position, norm.reshape(1))
    control[0] = coef / scale
    control[1] = skip.float()
    counters[0] += 1
    counters[1] += (~skip & (coef < 1)).long()
    counters[2] += skip.long()


def sgd_step_(
    params, grads, momentum_buffers, control, lr_tensor, lr, momentum, dampening,
    weight_decay, nesterov, maximize, is_first_step, grad_scale=None,
) -> None:
    """torch.optim.SGD's single-tensor update in opmath."""
    if not params or _skip(control):
        return
    lr = _lr(lr_tensor, lr)
    for i, param in enumerate(params):
        p = _widen(param)
        g = _grad(grads[i], control, maximize)
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = _widen(momentum_buffers[i])
            if is_first_step:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(buf, alpha=momentum) if nesterov else buf
            _write_back(momentum_buffers[i], buf)
        p.add_(g, alpha=-lr)
        _write_back(param, p)
    _store_unscaled_grads(grads, grad_scale)


def adam_step_(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, control, lr_tensor, lr,
    beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, rule,
    grad_scale=None,
) -> None:
    """torch.optim.Adam/AdamW's single-tensor update (or the playbook's) in opmath."""
    if not params or _skip(control):
        return
    lr = _lr(lr_tensor, lr)
    for i, param in enumerate(params):
        p, m, v = _widen(param), _widen(exp_avgs[i]), _widen(exp_avg_sqs[i])
        g = _grad(grads[i], control, maximize)
        steps[i] += 1
        step = float(steps[i])
        if weight_decay != 0:
            if decoupled_weight_decay:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        if rule == RULE_PLAYBOOK:
            step_size = lr * math.sqrt(bias_correction2) / bias_correction1
            bias_correction2_sqrt = 1.0
        else:
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
        second = v
        if amsgrad:
            vmax = _widen(max_exp_avg_sqs[i])
            torch.maximum(vmax, v, out=vmax)
            _write_back(max_exp_avg_sqs[i], vmax)
            second = vmax
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
        _write_back(param, p)
        _write_back(exp_avgs[i], m)
        _write_back(exp_avg_sqs[i], v)
    _store_unscaled_grads(grads, grad_scale)


def rmsprop_step_(
    params, grads, square_avgs, grad_avgs, momentum_buffers, steps, control, lr_tensor, lr,
    alpha, eps, weight_decay, momentum, centered, maximize, rule, grad_scale=None,
) -> None:
    """torch.optim.RMSprop's single-tensor update (or the playbook's) in opmath."""
    if not params or _skip(control):
        return
    lr = _lr(lr_tensor, lr)
    for i, param in enumerate(params):
        p, sq = _widen(param), _widen(square_avgs[i])
        g = _grad(grads[i], control, maximize)
        steps[i] += 1
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        base = sq
        if centered:
            ga = _widen(grad_avgs[i])
            ga.lerp_(g, 1 - alpha)
            _write_back(grad_avgs[i], ga)
            base = sq.addcmul(ga, ga, value=-1)
        avg = base.add(eps).sqrt() if rule == RULE_PLAYBOOK else base.sqrt().add_(eps)
        if momentum > 0:
            buf = _widen(momentum_buffers[i])
            if rule == RULE_PLAYBOOK:
                buf.mul_(momentum).add_(g / avg, alpha=lr)
                p.sub_(buf)
            else:
                buf.mul_(momentum).addcdiv_(g, avg)
                p.add_(buf, alpha=-lr)
            _write_back(momentum_buffers[i], buf)
        else:
            p.addcdiv_(g, avg, value=-lr)
        _write_back(param, p)
        _write_back(square_avgs[i], sq)
    _store_unscaled_grads(grads, grad_scale)


def nadam_step_(
    params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, control, lr_tensor, lr, beta1,
    beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize, rule,
    grad_scale=None,
) -> None:
    """torch.optim.NAdam's single-tensor update (or the playbook's) in opmath."""
    if not params or _skip(control):
        return
    lr = _lr(lr_tensor, lr)
    for i, param in enumerate(params):
        p, m, v = _widen(param), _widen(exp_avgs[i]), _widen(exp_avg_sqs[i])
        g = _grad(grads[i], control, maximize)
        steps[i] += 1
        step = float(steps[i])
        bias_correction2 = 1 - beta2**step
        if weight_decay != 0:
            if decoupled_weight_decay:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
        mu_products[i] *= mu
        mu_product = float(mu_products[i])
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if rule == RULE_PLAYBOOK:
            b = math.sqrt(bias_correction2) / (1 - beta1**step)
            numerator = m * beta1 + g * (1 - beta1)
            p.addcdiv_(numerator, v.sqrt().add_(eps), value=-lr * b)
        else:
            denom = v.div(bias_correction2).sqrt().add_(eps)
            p.addcdiv_(g, denom, value=-lr * (1.0 - mu) / (1.0 - mu_product))
            p.addcdiv_(m, denom, value=(-lr * mu_next) / (1.0 - mu_product * mu_next))
        _write_back(param, p)
        _write_back(exp_avgs[i], m)
        _write_back(exp_avg_sqs[i], v)
    _store_unscaled_grads(grads, grad_scale)

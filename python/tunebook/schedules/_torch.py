"""Adapters from schedules to optimizers: a torch ``LRScheduler`` and a device-resident driver."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from tunebook.schedules._base import ScalarOrSchedule, Schedule, as_schedule, check_int, evaluate


def _per_group(name: str, value: Any, groups: int) -> list[Schedule]:
    if isinstance(value, (list, tuple)):
        if len(value) != groups:
            raise ValueError(
                f"{name} has {len(value)} schedules but the optimizer has {groups} param groups: "
                "pass one schedule, or one per group"
            )
        return [as_schedule(v) for v in value]
    return [as_schedule(value)] * groups


class ScheduleLR(LRScheduler):
    r"""Drive any ``torch.optim`` optimizer's learning rate (and optionally momentum) from
    a schedule; a drop-in ``torch.optim.lr_scheduler.LRScheduler``.

    After the ``k``-th call to :meth:`step`, every group's ``lr`` is ``schedule(k)``
    (step 0 is applied at construction, as for every torch scheduler), so the usual loop
    ``optimizer.step(); scheduler.step()`` trains step ``k`` at ``schedule(k)``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (tunebook's included).
        schedule: a schedule or a float, or one per param group.
        momentum: optional schedule(s) for momentum, as the 1cycle policy needs. It sets
            ``group["momentum"]`` (SGD, RMSprop) or the first of ``group["betas"]`` (Adam
            family), whichever the group has.
        last_epoch: as in torch; ``-1`` starts a new run.

    The schedules are functions, so :meth:`state_dict` leaves them out (as ``LambdaLR``
    does for lambdas): rebuild the scheduler with the same schedule, then load the state.

    Example:
        >>> from tunebook.schedules import cosine_decay_schedule, linear_warmup
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.0)
        >>> sched = ScheduleLR(opt, linear_warmup(cosine_decay_schedule(0.1, 90), 10))
        >>> opt.param_groups[0]["lr"]
        0.0
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: ScalarOrSchedule | Sequence[ScalarOrSchedule],
        *,
        momentum: ScalarOrSchedule | Sequence[ScalarOrSchedule] | None = None,
        last_epoch: int = -1,
    ) -> None:
        groups = len(optimizer.param_groups)
        self.schedules = _per_group("schedule", schedule, groups)
        self.momentum_schedules = None if momentum is None else _per_group("momentum", momentum, groups)
        if self.momentum_schedules is not None:
            for index, group in enumerate(optimizer.param_groups):
                if "momentum" not in group and "betas" not in group:
                    raise ValueError(
                        f"param_groups[{index}] has neither 'momentum' nor 'betas': "
                        f"{type(optimizer).__name__} has no momentum for a momentum schedule to set"
                    )
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [evaluate(schedule, self.last_epoch) for schedule in self.schedules]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def _update_lr(self, epoch: int | None = None) -> None:
        super()._update_lr(epoch)
        if self.momentum_schedules is None:
            return
        for group, schedule in zip(self.optimizer.param_groups, self.momentum_schedules):
            value = evaluate(schedule, self.last_epoch)
            if "momentum" in group:
                group["momentum"] = value
            else:
                group["betas"] = (value, *tuple(group["betas"])[1:])

    def state_dict(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "schedules", "momentum_schedules")
        }


def _tabulate(schedule: Schedule, total_steps: int, group: int) -> np.ndarray:
    """``schedule`` at steps ``0 .. total_steps - 1``, float64.

    tunebook's schedules take the whole array at once. A plain Python function of one step
    (``lambda s: 0.1 if s < 5 else 0.01``, ``math.cos``) cannot: it raises or returns one
    value, and is then called once per step with an ``int``.
    """
    steps = np.arange(total_steps)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.asarray(schedule(steps), dtype=np.float64)
        if values.shape == (total_steps,):
            return values
    except Exception:  # noqa: BLE001 - not vectorised: evaluate step by step below
        pass
    values = np.empty(total_steps, dtype=np.float64)
    for step in range(total_steps):
        try:
            value = schedule(step)
            values[step] = float(value)
        except (TypeError, ValueError) as error:
            raise (TypeError if isinstance(error, TypeError) else ValueError)(
                f"the schedule of param group {group} must return a number for an int step; at step {step}: {error}"
            ) from error
    return values


class DeviceSchedule:
    r"""Keep each param group's learning rate on the device and advance it with device ops.

    The schedule is tabulated once, ``table = schedule(arange(total_steps))``, into a
    tensor on the parameters' device, with a step counter beside it. :meth:`step` does

    .. math:: k \leftarrow k + 1,\qquad \text{lr} \leftarrow \text{table}[\min(k, T-1)]

    with ``add_``, ``clamp``, ``index_select`` and ``copy_`` into the group's 0-dim ``lr``
    tensor, which the optimizer's kernel reads each step. No ``.item()``, no host tensor,
    no Python float changes: the whole optimizer step plus :meth:`step` can be captured
    in a CUDA graph and replayed, and the learning rate still follows the schedule.

    A group whose ``lr`` is a float gets a 0-dim tensor in its place (on the device of
    its first parameter); a tensor ``lr`` is updated in place and kept, so tensors that
    a captured graph holds stay the ones it reads. tunebook's optimizers read tensor
    learning rates in their kernels; torch's accept them with ``fused=True`` or
    ``capturable=True``.

    Steps past the end of the table hold its last value.

    Args:
        optimizer: the optimizer whose param groups to drive.
        schedule: a schedule or a float, or one per param group.
        total_steps: the length of the table, >= 1 (the training run's length).
        dtype: the dtype of the table and of new ``lr`` tensors; defaults to the existing
            tensor ``lr``'s dtype, else float32.

    Example:
        >>> from tunebook.schedules import linear_schedule
        >>> params = [torch.nn.Parameter(torch.zeros(3))]
        >>> opt = torch.optim.SGD(params, lr=torch.tensor(0.0))
        >>> driver = DeviceSchedule(opt, linear_schedule(0.0, 1.0, 4), total_steps=8)
        >>> driver.step(); driver.step()
        >>> float(opt.param_groups[0]["lr"])
        0.5
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: ScalarOrSchedule | Sequence[ScalarOrSchedule],
        total_steps: int,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.schedules = _per_group("schedule", schedule, len(optimizer.param_groups))
        steps = np.arange(self.total_steps)
        self.tables: list[torch.Tensor] = []
        self.counters: list[torch.Tensor] = []
        for index, (group, group_schedule) in enumerate(zip(optimizer.param_groups, self.schedules)):
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                if lr.dim() != 0:
                    raise ValueError(f"param_groups[{index}]['lr'] must be a 0-dim tensor, got shape {tuple(lr.shape)}")
                device, table_dtype = lr.device, dtype or lr.dtype
                if lr.dtype != table_dtype:
                    raise ValueError(
                        f"{dtype=} differs from param_groups[{index}]['lr'].dtype={lr.dtype}: "
                        "leave dtype unset or match it"
                    )
            else:
                params = group["params"]
                device = params[0].device if params else torch.device("cpu")
                table_dtype = dtype or torch.float32
                group["lr"] = torch.tensor(float(lr), dtype=table_dtype, device=device)
            values = _tabulate(group_schedule, self.total_steps, index)
            if not np.all(np.isfinite(values)):
                bad = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(
                    f"the schedule of param group {index} is {values[bad]} at step {bad}: a learning rate "
                    "must be finite"
                )
            self.tables.append(torch.as_tensor(values, dtype=table_dtype).to(device))
            self.counters.append(torch.zeros((), dtype=torch.int64, device=device))
        # Like a torch LRScheduler, apply step 0 at construction (a host-side setup step).
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        for group, table, counter in zip(self.optimizer.param_groups, self.tables, self.counters):
            index = counter.clamp(max=self.total_steps - 1).reshape(1)
            group["lr"].copy_(torch.index_select(table, 0, index).reshape(()))

    @torch.no_grad()
    def step(self) -> None:
        """Advance every group's learning rate one step, on its device, without a sync."""
        for counter in self.counters:
            counter.add_(1)
        self._apply()

    def last_lr(self) -> list[float]:
        """The current learning rates as floats (reads the device: not for a captured loop)."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The step counters; rebuild with the same schedule, then load."""
        return {"total_steps": self.total_steps, "steps": [int(counter) for counter in self.counters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["total_steps"] != self.total_steps or len(state["steps"]) != len(self.counters):
            raise ValueError(
                f"state is for total_steps={state['total_steps']} and {len(state['steps'])} groups; "
                f"this DeviceSchedule has {self.total_steps=} and {len(self.counters)} groups"
            )
        for counter, value in zip(self.counters, state["steps"]):
            counter.fill_(int(value))
        self._apply()

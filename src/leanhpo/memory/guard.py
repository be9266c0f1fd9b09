"""The memory guard of a training run: a trial stops for memory before the kernel kills it.

Two checks, both cheap (bench/memory.py measures them), through hooks, so the training loop
knows nothing of them:
- before each training pass (a forward pre-hook on the model), its rows and width against the
  budget (the row cost measured at the start, the memory in use then). A pass that would not fit
  stops the trial before any of it is allocated. The optimizer's step hook keeps the position.
- after each encoder layer (forward hooks: training and validation passes), the memory in use now,
  read like the plan's (the tightest cgroup, or the machine). When one more layer like those of
  this pass so far (or its share of the estimate) could cross the limit, the pass stops: the
  estimate missed something (allocator slack, another process growing). The OutOfMemoryStop
  unwinds out of the forward pass and its autograd graph is freed. One layer is the grain: a
  single layer that alone jumps past the limit is the kernel's to stop (see attempts.py).

The stop is the trial's failure (reason out_of_memory, with the figures); the study goes on.
`LEANHPO_MEMORY_GUARD=off` keeps the guard recording but never stopping: it exists to test what
happens when the kernel's OOM killer strikes anyway (tests/test_memory_limit.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from leanhpo.memory.attempts import NEAR_LIMIT, AttemptLog
from leanhpo.memory.budget import MemoryBudget, OutOfMemoryStop, stop_margin
from leanhpo.memory.limits import MemoryReading, MemoryWatch
from leanhpo.storage.preflight import human

GUARD_ENV = "LEANHPO_MEMORY_GUARD"


def encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    """The blocks of a transformer encoder (the longest ModuleList: BERT's `encoder.layer`),
    or the encoder itself when it has none."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    longest = max(lists, key=len, default=None)
    return list(longest) if longest else [encoder]


class MemoryGuard:
    def __init__(
        self,
        budget: MemoryBudget,
        watch: MemoryWatch,
        record: AttemptLog,
        max_rows: int | None,
        fixes: list[str],
    ) -> None:
        self.budget, self.watch, self.record = budget, watch, record
        self.max_rows, self.fixes = max_rows, fixes
        self.enabled = os.environ.get(GUARD_ENV, "on").lower() not in ("off", "0", "false")
        # `done`: optimizer steps finished in this epoch (the optimizer's hook counts them);
        # `step`: the step of the pass under way (done + 1; micro-batches share it), which every
        # record and message names, as the batch plan does (training/batch_plan.py).
        self.epoch = self.done = self.step = self.rows = 0
        self.width: int | None = None
        self.layers = 1
        self._handles: list[Any] = []
        self._pass_start = self._layers_done = 0
        # The hooks read host memory; on CUDA the budget (and its estimate) is the device's.
        self.host = not budget.reading.source.startswith("cuda")

    def attach(self, model: nn.Module, encoder: nn.Module, optimizer: Any) -> MemoryGuard:
        """Watch `model`'s training passes (a forward pre-hook: its rows and width before
        anything is allocated), `encoder`'s layers, and `optimizer`'s steps (the position)."""
        layers = encoder_layers(encoder)
        self.layers = len(layers)
        self._handles = [layer.register_forward_hook(self._after_layer) for layer in layers]
        self._handles.append(
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        )
        self._handles.append(optimizer.register_step_post_hook(self._stepped))
        return self

    def __enter__(self) -> MemoryGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.done, self.step, self.rows = epoch, 0, 0, 0
        self.record.at(epoch, 0, 0, write=True)

    def _stepped(self, *_: Any) -> None:
        self.done += 1

    def _before_forward(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self._pass_start, self._layers_done = self.watch.read().used, 0
        if module.training and torch.is_grad_enabled():  # a training pass, not validation
            inputs = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            rows, width = inputs.shape
            self.before_pass(self.done + 1, int(rows), int(width))
        else:
            self.rows = 0

    def before_pass(self, step: int, rows: int, width: int) -> None:
        """Called by the training loop before each forward/backward pass."""
        self.step, self.rows, self.width = step, rows, width
        needed = self.budget.needed(rows, width)
        limit = self.budget.reading.limit
        # A pass this large is where a kill would land: its position is on disk first.
        self.record.at(self.epoch, step, rows, write=needed >= NEAR_LIMIT * limit)
        if self.enabled and not self.budget.fits(rows, width):
            raise self._stop(
                f"a training pass of {rows} rows would need about {human(needed)} of the "
                f"{human(limit)} limit",
                self.budget.figures(rows, width),
            )

    def _after_layer(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        reading = self.watch.read()
        self.record.saw(reading)
        if not self.enabled:
            return
        # The next layer keeps about what each layer of this pass kept so far, and a training
        # pass about its share of the estimate (whichever is more: either may be wrong).
        self._layers_done += 1
        grown = max(0, reading.used - self._pass_start) // self._layers_done
        training = torch.is_grad_enabled() and self.rows > 0
        estimate = self.budget.cost.pass_bytes(self.rows, self.width) // self.layers
        room = stop_margin(reading.limit) + max(grown, estimate if training and self.host else 0)
        if reading.used + room > reading.limit:
            what = f"a training pass of {self.rows} rows" if training else "a validation pass"
            raise self._stop(
                f"memory in use reached {human(reading.used)} of the {human(reading.limit)} "
                f"limit during {what}",
                self._measured(reading),
            )

    def _measured(self, reading: MemoryReading) -> dict[str, Any]:
        return {
            **self.budget.figures(self.rows, self.width),
            "used_bytes": reading.used,
            "limit_bytes": reading.limit,
            "available_bytes": reading.headroom,
            "limit_source": reading.source,
            "measured": True,
        }

    def _stop(self, what: str, figures: dict[str, Any]) -> OutOfMemoryStop:
        cap = "null (no cap)" if self.max_rows is None else self.max_rows
        message = (
            f"out of memory: {what} ({figures['limit_source']}) at epoch {self.epoch}, step "
            f"{self.step}; {human(figures['bytes_per_row'])} per row of "
            f"{figures['row_width']} tokens, rows per pass {cap}. The trial stopped before the "
            "kernel's OOM killer would end it. To fix: " + "; ".join(self.fixes)
        )
        figures = {**figures, "epoch": self.epoch, "step": self.step}
        figures["max_batch_rows"] = self.max_rows
        return OutOfMemoryStop(message, {**figures, "fixes": self.fixes})

"""Which step of its own denoising loop a pipeline is on, read off its scheduler, for every scheduler.

The loop a pipeline runs is a slice of ``scheduler.timesteps`` (img2img / inpaint start later,
``denoising_end`` stops earlier), of length ``pipe.num_timesteps``. Each loop iteration is one
denoiser call; multi-call schedulers (Heun, KDPM2, DPM-SDE: ``scheduler.order == 2``) spend
``order`` iterations on one step. Where the loop is in that slice:

- schedulers with a ``step_index`` (Euler, DPM-Solver, UniPC, Heun, KDPM2, LMS, flow matching, …)
  count it themselves, from ``begin_index`` (which img2img pipelines set);
- PNDM (PLMS) counts its ``step()`` calls in ``counter`` (its schedule repeats a timestep);
- the rest (DDIM, DDPM, …) have distinct timesteps: the call's position in the schedule, less the
  position of the first timestep this schedule was seen at.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch


def _first_timestep(timestep: Any) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)


class LoopProgress:
    """``progress(timestep)`` = (index of the current step in the host's loop) / (steps in that loop)."""

    def __init__(self, pipe: Any, timestep_scale: float = 1.0) -> None:
        self.pipe = pipe
        self.timestep_scale = timestep_scale  # the pipeline hands its denoiser ``timestep / timestep_scale``
        self._first_seen = threading.local()  # (schedule tensor, its first position) per thread

    def loop_length(self) -> int:
        scheduler = self.pipe.scheduler
        length = getattr(self.pipe, "num_timesteps", None)
        if isinstance(length, int) and length > 0:
            return length
        return len(scheduler.timesteps) - (getattr(scheduler, "begin_index", None) or 0)

    def call_index(self, timestep: Any) -> int:
        """Index of the current denoiser call among the loop's calls (0 at the first)."""
        scheduler = self.pipe.scheduler
        if hasattr(type(scheduler), "step_index"):
            index = scheduler.step_index
            return 0 if index is None else index - (getattr(scheduler, "begin_index", None) or 0)
        if isinstance(getattr(scheduler, "counter", None), int):
            return scheduler.counter
        return self._position_in_schedule(scheduler.timesteps, timestep)

    def _position_in_schedule(self, schedule: torch.Tensor, timestep: Any) -> int:
        if timestep is None or len(schedule) == 0:
            return 0
        position = int((schedule.float() - _first_timestep(timestep) * self.timestep_scale).abs().argmin())
        seen = getattr(self._first_seen, "value", None)
        if seen is None or seen[0] is not schedule or position < seen[1]:
            seen = (schedule, position)  # a new schedule: set_timesteps made a new tensor
            self._first_seen.value = seen
        return position - seen[1]

    def __call__(self, timestep: Any) -> float:
        order = max(int(getattr(self.pipe.scheduler, "order", 1) or 1), 1)
        steps = math.ceil(self.loop_length() / order)
        if steps <= 0:
            return 0.0
        return min(self.call_index(timestep) // order, steps - 1) / steps

"""``Wakeup``: wake one parked task; the cheapest "something changed, look again"."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["Wakeup"]


class Wakeup:
    """Wake one parked task; the cheapest 'something changed, look again'.

    Edge-triggered: trio is cooperative, so a task that checks its condition and
    then parks cannot miss a ``wake()`` made after the check.
    """

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        if self._task is not None:
            raise trio.BusyResourceError("another task is already waiting on this Wakeup")
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

"""What a model call is part of, for wrappers that keep state from one call to the next (step caches).

The sampling session (samplers/session.py) sets a `Call` around every model call it makes: the run it belongs to
(one sampling loop, or one diffusion-forcing window: a wrapper's state starts afresh with each run), the step of
that run, the guidance branches whose rows the call's batch holds, and which model of the run is called (a Wan2.2
pair has two, each with its span of steps). A forward outside a session has no `Call`, and stateful wrappers then
leave it alone. Wrappers post a report for the session with `Reports.post`; the session logs and shows them when it
ends.

A call made in another process (a multi-GPU worker) travels as a `Ticket`; the worker's `Runs` turns tickets back
into calls whose runs are the same objects from one call of a run to the next, so its wrappers keep their state.
"""
from __future__ import annotations

import contextlib
import itertools
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

BRANCHES = ("positive", "negative")   # classifier-free guidance branches, in the order a batched call holds them
_SERIALS = itertools.count()          # names sessions and runs for the life of this process (ids may be reused)


class Reports:
    """What stateful wrappers have to say about one sampling session: one text-maker per wrapper (the latest one
    posted), called when the session ends."""

    def __init__(self):
        self._makers: dict[int, tuple[object, Callable[[], str]]] = {}
        self.serial = next(_SERIALS)

    def post(self, owner: object, make: Callable[[], str]) -> None:
        self._makers[id(owner)] = (owner, make)

    def texts(self) -> list[str]:
        return [text for _, make in self._makers.values() if (text := make())]


@dataclass(eq=False)
class Run:
    """One sampling loop (or one diffusion-forcing window) of a session: `steps` steps, of which model i of the
    run takes `spans[i]` (a single model all of them; a Wan2.2 pair's high-noise expert the first ones)."""
    steps: int
    spans: tuple[range, ...]
    reports: Reports
    serial: int = field(default_factory=lambda: next(_SERIALS))


@dataclass(frozen=True, eq=False)
class Call:
    """One model call: step `step` of `run`, by model `expert` of the run. `branches`: the guidance branches whose
    rows the batch holds, in order, an equal share of rows each (("positive", "negative") for batched CFG);
    `branches_per_step`: the branches each step evaluates (2 with classifier-free guidance, else 1)."""
    run: Run
    step: int
    branches: tuple[str, ...]
    branches_per_step: int
    expert: int = 0

    @property
    def experts(self) -> int:
        return len(self.run.spans)

    @property
    def span(self) -> range:
        return self.run.spans[self.expert]


@dataclass(frozen=True)
class Ticket:
    """A `Call` in plain values, for another process to make the same call: its session and run by serial number.
    `branches` may be a part of the call's (the rows that process gets)."""
    session: int
    run: int
    steps: int
    spans: tuple[range, ...]
    step: int
    branches: tuple[str, ...]
    branches_per_step: int
    expert: int

    @classmethod
    def of(cls, call: Call, branches: tuple[str, ...]) -> "Ticket":
        return cls(call.run.reports.serial, call.run.serial, call.run.steps, call.run.spans, call.step, branches,
                   call.branches_per_step, call.expert)


class Runs:
    """A worker's side of tickets: one `Run` per run of the caller's session, with one `Reports` for the session
    (a new session forgets the last one's)."""

    def __init__(self):
        self._session: int | None = None
        self._reports = Reports()
        self._runs: dict[int, Run] = {}

    def call(self, ticket: Ticket) -> Call:
        if ticket.session != self._session:
            self._session, self._reports, self._runs = ticket.session, Reports(), {}
        run = self._runs.get(ticket.run)
        if run is None:
            run = self._runs[ticket.run] = Run(ticket.steps, ticket.spans, self._reports)
        return Call(run, ticket.step, ticket.branches, ticket.branches_per_step, ticket.expert)

    def texts(self) -> list[str]:
        """The reports of the session's wrappers so far."""
        return self._reports.texts()


_CURRENT: ContextVar[Call | None] = ContextVar("openreel_model_call", default=None)


def current() -> Call | None:
    """The call in progress (None outside a sampling session)."""
    return _CURRENT.get()


@contextlib.contextmanager
def calling(call: Call) -> Iterator[None]:
    token = _CURRENT.set(call)
    try:
        yield
    finally:
        _CURRENT.reset(token)

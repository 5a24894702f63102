"""The global cap of a queue across managers (issue 17): what an admin sets, what a manager asks
for before it submits, and what `hpcscale status` shows of every manager's share.

The store is the one place that knows every manager's elements, so the cap lives there and not
in any manager's config: two managers with different files still agree on it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from hpcscale.models.common import MAX_INT32, NO_NUL, QueueName, _Wire
from hpcscale.models.manager import Tag


class QueueCapUpdate(_Wire):
    """An admin's setting: at most `global_cap` elements of every manager together may be in
    flight for the queue; None removes the cap."""

    global_cap: int | None = Field(default=None, ge=0, le=MAX_INT32)


class QueueCap(_Wire):
    """A capped queue, what is in flight for it now, and each manager's share of that."""

    queue: str
    global_cap: int
    in_flight: int
    shares: dict[str, int] = Field(default_factory=dict, description="manager -> elements")


class GrantRequest(_Wire):
    """A manager's ask, before it records the intent `tag`: may it submit `count` elements of
    `pool`, which serves `queues`? The grant holds until the intent is recorded, the manager's
    registration goes stale (`stale_after`) or another instance takes its name."""

    manager: QueueName
    instance: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
    pool: QueueName
    tag: Tag
    queues: list[QueueName] = Field(min_length=1, max_length=1000)
    count: int = Field(ge=1, le=1_000_000)
    stale_after: float = Field(default=90.0, gt=0, le=86400)


class GrantReply(_Wire):
    """`granted` <= the request's count; `limited_by`: the capped queues that held it lower,
    each with its cap and what every manager had in flight before this grant."""

    granted: int
    limited_by: list[QueueCap] = Field(default_factory=list)

"""Reading a JSONL task file: one JSON task a line, every bad line named before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from hpcscale.config import describe
from hpcscale.errors import ConfigError
from hpcscale.models import TaskSpec

MAX_PROBLEMS = 20


def read_tasks(
    path: Path, defaults: dict[str, object] | None = None, base: Path | None = None
) -> list[TaskSpec]:
    """All tasks of the file, or ConfigError listing `LINE N: key: problem` for each bad line.
    A relative "cwd" is taken from `base` (the directory submit ran in, as a relative --cwd is),
    so a file means the same whoever's shell submits it from the same place."""
    specs: list[TaskSpec] = []
    problems: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON: {exc.msg}")
                continue
            if not isinstance(data, dict):
                problems.append(
                    f'{path}:{number}: must be a JSON object such as {{"command": ["echo", "hi"]}}'
                )
                continue
            if base is not None and isinstance(data.get("cwd"), str):
                data["cwd"] = str((base / data["cwd"]).resolve())
            try:
                specs.append(TaskSpec(**{**(defaults or {}), **data}))
            except ValidationError as exc:
                problems.extend(f"{path}:{number}: {p}" for p in describe(exc))
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
                break
    if problems:
        raise ConfigError(problems)
    if not specs:
        raise ConfigError([f"{path}: no tasks in the file"])
    return specs

"""HPCSCALE_* environment variables as overrides of the config file's keys.

`HPCSCALE_SERVER__URL=...`, `HPCSCALE_MANAGER__NAME=...` and, for a pool of the file by its
index, `HPCSCALE_POOLS__0__MAX_WORKERS=3` or `HPCSCALE_POOLS__0__SLURM__PARTITION=long`: `__`
between levels, names in any case. Merged here into the file's data rather than by
pydantic-settings, which cannot reach into the list of pools, and which reports a wrong
variable as if it were a key of the file: here each key taken from the environment is
remembered, so a problem with it names the variable the admin set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hpcscale.errors import ConfigError

PREFIX = "HPCSCALE_"
SECTIONS = ("server", "manager", "pools")


def apply(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Merge the environment's overrides into `data` (the file's, in place); return each
    overridden key as check-config names it (`pools[0].max_workers`) -> its variable."""
    origins: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or "__" not in name:
            continue  # HPCSCALE_CONFIG, HPCSCALE_TOKEN, ...: not config keys
        path = [part.lower() for part in name[len(PREFIX) :].split("__")]
        if path[0] not in SECTIONS or "" in path:
            problems.append(f"{name} (environment): unknown key {'.'.join(path)}")
            continue
        where: Any = data
        if path[0] == "pools":
            pools = data.get("pools")
            if not path[1].isdigit() or not isinstance(pools, list) or int(path[1]) >= len(pools):
                count = len(pools) if isinstance(pools, list) else 0
                problems.append(
                    f"{name} (environment): no pools[{path[1]}] in the file (it has {count}); "
                    "the environment overrides keys of the file's pools, it does not add pools"
                )
                continue
            where, path = pools[int(path[1])], path[2:]
            key = f"pools[{name.split('__')[1]}]." + ".".join(path)
        else:
            key = ".".join(path)
        for part in path[:-1]:
            if not isinstance(where.get(part), dict):
                where[part] = {}
            where = where[part]
        where[path[-1]] = _value(environ[name])
        origins[key] = name
    if problems:
        raise ConfigError(problems)
    return origins


def _value(text: str) -> Any:
    """A list or table as JSON (`["a","b"]`), anything else as the string pydantic converts."""
    if text.strip().startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def name_the_variables(problems: list[str], origins: Mapping[str, str]) -> list[str]:
    """`pools[0].max_workers: must be ≥ 0` -> `HPCSCALE_POOLS__0__MAX_WORKERS (environment):
    pools[0].max_workers: must be ≥ 0` when that key came from the environment."""
    named = []
    for line in problems:
        key = line.split(": ", 1)[0]
        variable = origins.get(key)
        named.append(f"{variable} (environment): {line}" if variable else line)
    return named

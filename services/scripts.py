"""The Lua scripts behind every state change, loaded from ``services/lua/*.lua``.

Each script file opens with its KEYS/ARGV contract. redis-py's ``Script`` sends EVALSHA and
falls back to loading the script once per connection pool when Redis does not know it yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis import Redis
from redis.commands.core import Script


def _source(name: str) -> str:
    return resources.files("services").joinpath("lua", f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    begin_run: Script
    finish_run: Script
    renew_lease: Script
    control: Script

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(
            begin_run=client.register_script(_source("begin_run")),
            finish_run=client.register_script(_source("finish_run")),
            renew_lease=client.register_script(_source("renew_lease")),
            control=client.register_script(_source("control")),
        )

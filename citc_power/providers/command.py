"""The ``command`` provider: a site's own commands for on / off / reboot / state.

What real sites use for wake-on-LAN, PDUs or their own scripts::

    providers:
      wol:
        type: command
        on: "/usr/local/sbin/wake {node} --mac {mac}"
        off: "ssh {address} poweroff"
        state: "/usr/local/sbin/power-state {node}"   # prints on / off
        address: "{node}.cluster"                      # optional: report this NodeAddr
        timeout: 120
        concurrency: 16

Each command is split once into an argument list (shell quoting rules, no shell runs it), then
``{node}``, ``{address}``, ``{hostname}`` and the node's ``key=value`` features are substituted
into each argument. Exit status 0 is success. On stdout, lines ``address=…``, ``hostname=…``,
``instance_id=…`` report facts to Slurm and ``code=…`` picks the failure code.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import string
import tempfile
from typing import Any, Mapping, Optional, Sequence

from ..errors import ConfigError
from ..settings import SettingsReader
from .base import CONFIG, ERROR, TIMEOUT, Node, Outcome, PowerState, Provider

log = logging.getLogger(__name__)

FACT_KEYS = ("address", "hostname", "instance_id", "instance_type")
STATE_WORDS = {
    "on": PowerState.ON, "off": PowerState.OFF, "absent": PowerState.ABSENT,
    "transition": PowerState.TRANSITION, "unknown": PowerState.UNKNOWN,
}
OUTPUT_LIMIT = 64 * 1024


class _Missing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def split_template(text: str, key: str, reader: SettingsReader) -> Optional[list[str]]:
    """Split a command template into arguments and check its ``{placeholders}``."""
    try:
        argv = shlex.split(text)
        for arg in argv:
            list(string.Formatter().parse(arg))
    except ValueError as exc:
        reader.problem(key, f"cannot parse {text!r} ({exc}); check quotes and braces")
        return None
    if not argv:
        reader.problem(key, "is empty; give the command to run")
        return None
    return argv


class CommandProvider(Provider):
    """Runs a site's commands, one process per node, with a timeout and a concurrency limit."""

    SETTINGS = {
        "on": "command that powers a node on (required)",
        "off": "command that powers a node off (required)",
        "reboot": "command that restarts a node (default: off, then on)",
        "state": "command that prints on/off/absent for a node (default: unknown)",
        "address": "template of the address to report to Slurm, e.g. '{node}.ib' (default: none)",
        "hostname": "template of the hostname to report to Slurm (default: the node name)",
        "timeout": "seconds one command may run before it is killed (default 300)",
        "concurrency": "how many commands run at once (default 16)",
        "environment": "extra environment variables for the commands (mapping)",
    }

    def __init__(self, name: str, commands: Mapping[str, Optional[list[str]]], address: Optional[str],
                 hostname: Optional[str], timeout: float, concurrency: int, environment: Mapping[str, str]):
        super().__init__(name)
        self.commands = dict(commands)
        self.address = address
        self.hostname = hostname
        self.timeout = timeout
        self.concurrency = concurrency
        self.environment = dict(environment)

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> "CommandProvider":
        s = SettingsReader(name, settings, cls.SETTINGS)
        commands: dict[str, Optional[list[str]]] = {}
        for key in ("on", "off", "reboot", "state"):
            text = s.str(key) if key in ("on", "off") else s.str(key, None)
            commands[key] = split_template(text, key, s) if text else None
        address, hostname = s.str("address", None), s.str("hostname", None)
        timeout = s.float("timeout", 300.0, minimum=0.1)
        concurrency = s.int("concurrency", 16, minimum=1)
        env = s.mapping("environment", {})
        s.done()
        return cls(name, commands, address, hostname, timeout, concurrency,
                   {str(k): str(v) for k, v in (env or {}).items()})

    # -- running ----------------------------------------------------------------------------
    def _values(self, node: Node) -> dict[str, str]:
        values = {k: v for k, v in node.features.items()}
        values.update(node=node.name, address=node.address or node.name, hostname=node.hostname or node.name)
        return values

    def _argv(self, action: str, node: Node) -> list[str]:
        template = self.commands[action] or []
        values = _Missing(self._values(node))
        return [arg.format_map(values) for arg in template]

    async def _run(self, action: str, node: Node, sem: asyncio.Semaphore) -> tuple[int, str, str]:
        """Run one command; returns (exit status, stdout, last stderr line). -1 = timed out."""
        argv = self._argv(action, node)
        env = dict(os.environ, **self.environment, CITC_NODE=node.name)
        async with sem:
            # files, not pipes: a command that starts a daemon must not keep us waiting for EOF
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                log.debug("%s %s: running %s", action, node.name, argv)
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                    start_new_session=True)
                try:
                    status = await asyncio.wait_for(proc.wait(), self.timeout)
                except asyncio.TimeoutError:
                    _kill_group(proc.pid)
                    await proc.wait()
                    status = -1
                out.seek(0)
                err.seek(0)
                stdout = out.read(OUTPUT_LIMIT).decode(errors="replace")
                stderr = err.read(OUTPUT_LIMIT).decode(errors="replace").strip().splitlines()
        return status, stdout, stderr[-1] if stderr else ""

    async def _act(self, action: str, node: Node, sem: asyncio.Semaphore) -> Outcome:
        try:
            status, stdout, last_err = await self._run(action, node, sem)
        except KeyError as exc:
            return Outcome.failure(node.name, CONFIG, f"{action} command uses {{{exc.args[0]}}} "
                                   f"but node {node.name} has no such feature")
        except OSError as exc:
            return Outcome.failure(node.name, CONFIG, f"{action} command cannot start: {exc.strerror}")
        facts = parse_facts(stdout)
        code = facts.pop("code", "") or ERROR
        if status == -1:
            return Outcome.failure(node.name, TIMEOUT, f"{action} command timed out after {self.timeout:.0f}s")
        if status != 0:
            return Outcome.failure(node.name, code, f"{action} command exited {status}: {last_err}".rstrip(": "))
        if action in ("on", "reboot"):
            values = self._values(node)
            if self.address and "address" not in facts:
                facts["address"] = self.address.format_map(_Missing(values))
            if self.hostname and "hostname" not in facts:
                facts["hostname"] = self.hostname.format_map(_Missing(values))
        return Outcome.success(node.name, **{k: v for k, v in facts.items() if k in FACT_KEYS})

    async def _each(self, action: str, nodes: Sequence[Node]) -> list[Outcome]:
        sem = asyncio.Semaphore(self.concurrency)
        return list(await asyncio.gather(*(self._act(action, n, sem) for n in nodes)))

    async def power_on(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Run the ``on`` command for each node. Never raises."""
        return await self._each("on", nodes)

    async def power_off(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Run the ``off`` command for each node. Never raises."""
        return await self._each("off", nodes)

    async def reboot(self, nodes: Sequence[Node]) -> list[Outcome]:
        """Run ``reboot``, or ``off`` then ``on`` when no reboot command is set. Never raises."""
        if self.commands.get("reboot"):
            return await self._each("reboot", nodes)
        offs = await self._each("off", nodes)
        ons = await self._each("on", [n for n, o in zip(nodes, offs) if o.ok])
        by_name = {o.node: o for o in offs if not o.ok} | {o.node: o for o in ons}
        return [by_name[n.name] for n in nodes]

    async def power_state(self, nodes: Sequence[Node]) -> dict[str, PowerState]:
        """Run ``state`` for each node and read on/off/absent from its output."""
        if not self.commands.get("state"):
            return {n.name: PowerState.UNKNOWN for n in nodes}
        sem = asyncio.Semaphore(self.concurrency)

        async def one(node: Node) -> PowerState:
            try:
                status, stdout, _ = await self._run("state", node, sem)
            except (KeyError, OSError):
                return PowerState.UNKNOWN
            word = stdout.strip().split()[0].lower() if status == 0 and stdout.strip() else "unknown"
            return STATE_WORDS.get(word, PowerState.UNKNOWN)

        states = await asyncio.gather(*(one(n) for n in nodes))
        return {n.name: s for n, s in zip(nodes, states)}


def parse_facts(stdout: str) -> dict[str, str]:
    """``key=value`` lines of a command's output (address, hostname, instance_id, code)."""
    facts = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in FACT_KEYS + ("code",) and value:
            facts[key] = value.strip()
    return facts


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


__all__ = ["CommandProvider", "ConfigError"]

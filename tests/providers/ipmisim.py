"""A farm of OpenIPMI ``ipmi_sim`` BMCs on 127.0.0.1, one process and UDP port per node.

Each BMC's chassis is the shell script below, named in lan.conf by ``chassis_control``.
ipmi_sim runs it through ``popen()`` (so through ``/bin/sh -c``) with the words it appends:

    chassis.sh STATE_DIR get power          -> must print "power:0" or "power:1", exit 0
    chassis.sh STATE_DIR set power 1        <- Chassis Control power up
    chassis.sh STATE_DIR set power 0        <- power down; a power cycle is "set power 0",
                                               then ipmi_sim's own 1 s timer, "set power 1"
    chassis.sh STATE_DIR set shutdown 1     <- soft shutdown (ACPI request to the OS)
    chassis.sh STATE_DIR set reset 1        <- hard reset

A non-zero exit becomes completion code 0xff for the client. ipmi_sim is single-threaded and
waits for the script, so a script that hangs hangs the whole BMC (no ping replies either).

Files in each node's state dir steer the script: ``power`` (0/1), ``fail`` (every call fails),
``hang`` (every call blocks while it exists), ``ignore_soft`` (the OS ignores soft shutdown),
``soft_delay`` (seconds the OS takes to shut down), ``stuck`` (power down has no effect),
``hook`` (a command run as ``hook start|stop NODE`` when the power changes). Every call is
appended to ``calls``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import yaml

CHASSIS_SCRIPT = r"""#!/bin/sh
# Chassis of one simulated BMC; see ipmisim.py for the protocol.
dir=$1; shift
echo "$*" >> "$dir/calls"
while [ -e "$dir/hang" ]; do sleep 0.1; done
if [ -e "$dir/fail" ]; then echo "injected failure"; exit 1; fi

power() { cat "$dir/power" 2>/dev/null || echo 0; }
hook() {
    [ -s "$dir/hook" ] || return 0
    "$(cat "$dir/hook")" "$1" "$(cat "$dir/node")" </dev/null >>"$dir/hook.log" 2>&1
}
switch() {
    if [ "$1" = 0 ] && [ -e "$dir/stuck" ]; then return 0; fi
    old=$(power)
    echo "$1" > "$dir/power"
    [ "$old" = "$1" ] && return 0
    if [ "$1" = 1 ]; then hook start; else hook stop; fi
}
soft_off() {
    [ -e "$dir/ignore_soft" ] && return 0
    if [ -s "$dir/soft_delay" ]; then
        delay=$(cat "$dir/soft_delay")
        ( sleep "$delay"; switch 0 ) </dev/null >/dev/null 2>&1 &
    else
        switch 0
    fi
}

op=$1; shift
case "$op" in
  get)
    for p in "$@"; do
      case "$p" in
        power) echo "power:$(power)" ;;
        boot) echo "boot:default" ;;
        *) echo "$p:0" ;;
      esac
    done ;;
  set)
    while [ $# -ge 2 ]; do
      p=$1; v=$2; shift 2
      case "$p" in
        power) switch "$v" ;;
        shutdown) soft_off ;;
        reset) if [ "$(power)" = 1 ]; then hook stop; hook start; fi ;;
      esac
    done ;;
  *) echo "unknown operation: $op"; exit 1 ;;
esac
exit 0
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} {state}"
  user 2 true "{username}" "{password}" admin 10 none md2 md5 straight
"""

EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""

# RMCP header (version 6, no ack, class ASF) + ASF Presence Ping (IANA 4542, type 0x80)
ASF_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00])


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct free UDP ports on 127.0.0.1 (held together while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def answers_ping(port: int, timeout: float = 0.2) -> bool:
    """Whether something on 127.0.0.1:``port`` answers an RMCP/ASF Presence Ping."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(ASF_PING, ("127.0.0.1", port))
            data = s.recv(512)
        except OSError:
            return False
    return len(data) > 8 and data[8] == 0x40  # Presence Pong


class SimBmc:
    """One running ipmi_sim and the state dir its chassis script keeps."""

    def __init__(self, node: str, port: int, state: Path, proc: subprocess.Popen):
        self.node = node
        self.port = port
        self.state = state
        self.proc = proc

    @property
    def power(self) -> int:
        try:
            return int((self.state / "power").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def set_power(self, on: bool) -> None:
        """Set the power behind the BMC's back (no hook is run)."""
        (self.state / "power").write_text("1\n" if on else "0\n")

    def inject(self, what: str, on: bool = True) -> None:
        """Turn a fault on or off: fail, hang, ignore_soft, stuck."""
        assert what in ("fail", "hang", "ignore_soft", "stuck"), what
        path = self.state / what
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def soft_delay(self, seconds: float) -> None:
        """The OS takes ``seconds`` to shut down after a soft shutdown request."""
        (self.state / "soft_delay").write_text(f"{seconds}\n")

    def calls(self) -> list[str]:
        """Every chassis call so far, e.g. ``["get power", "set power 1", ...]``."""
        try:
            return (self.state / "calls").read_text().splitlines()
        except FileNotFoundError:
            return []


class IpmiSimFarm:
    """Starts and stops a set of ipmi_sim BMCs under ``root``."""

    def __init__(
        self,
        root: Path,
        username: str = "citc",
        password: str = "Pw-0fSimBmc",
        hook: Optional[Path] = None,
    ):
        self.root = root
        self.username = username
        self.password = password
        self.hook = hook
        self.bmcs: dict[str, SimBmc] = {}
        self.script = root / "chassis.sh"
        root.mkdir(parents=True, exist_ok=True)
        self.script.write_text(CHASSIS_SCRIPT)
        self.script.chmod(0o755)

    def start(
        self,
        nodes: Sequence[str],
        on: bool = False,
        timeout: float = 10.0,
        ports: Optional[Sequence[int]] = None,
    ) -> list[SimBmc]:
        """Start one BMC per node, wait until all answer a ping; ``on`` = powered on.

        ``ports``: the UDP port of each node's BMC; free ones are chosen when not given.
        """
        chosen = list(ports) if ports is not None else free_udp_ports(len(nodes))
        new = [self._spawn(node, port, on) for node, port in zip(nodes, chosen)]
        self._wait_ready(new, timeout)
        return new

    def _spawn(self, node: str, port: int, on: bool) -> SimBmc:
        base = self.root / node
        state = base / "state"
        (base / "sim").mkdir(parents=True, exist_ok=True)
        state.mkdir(exist_ok=True)
        (state / "node").write_text(node)
        (state / "power").write_text("1\n" if on else "0\n")
        if self.hook is not None:
            (state / "hook").write_text(str(self.hook))
        conf = base / "lan.conf"
        conf.write_text(
            LAN_CONF.format(
                name=node,
                port=port,
                script=self.script,
                state=state,
                username=self.username,
                password=self.password,
            )
        )
        emu = base / "bmc.emu"
        emu.write_text(EMU)
        with open(base / "ipmi_sim.log", "wb") as out:
            proc = subprocess.Popen(
                ["ipmi_sim", "-c", str(conf), "-f", str(emu), "-s", str(base / "sim"), "-n"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        bmc = SimBmc(node, port, state, proc)
        self.bmcs[node] = bmc
        return bmc

    def _wait_ready(self, bmcs: Iterable[SimBmc], timeout: float) -> None:
        waiting = list(bmcs)
        deadline = time.monotonic() + timeout
        while waiting:
            for bmc in waiting:
                if bmc.proc.poll() is not None:
                    log = (bmc.state.parent / "ipmi_sim.log").read_text(errors="replace")
                    raise RuntimeError(
                        f"ipmi_sim for {bmc.node} exited {bmc.proc.returncode}: {log}"
                    )
            waiting = [b for b in waiting if not answers_ping(b.port, 0.05)]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"ipmi_sim not answering: {', '.join(b.node for b in waiting)}")

    def manifest(
        self, path: Path, password_file: Path, nodes: Optional[Iterable[str]] = None
    ) -> Path:
        """Write a BMC manifest (node: address, port, username, password_file) for the farm."""
        names = list(nodes) if nodes is not None else list(self.bmcs)
        data = {
            n: {
                "address": "127.0.0.1",
                "port": self.bmcs[n].port,
                "username": self.username,
                "password_file": str(password_file),
            }
            for n in names
        }
        path.write_text(yaml.safe_dump(data))
        return path

    def addresses(self) -> dict[str, dict[str, object]]:
        """The ``addresses`` setting for the farm: node: {address, port}."""
        return {n: {"address": "127.0.0.1", "port": b.port} for n, b in self.bmcs.items()}

    def stop(self) -> None:
        """Kill every BMC with its chassis scripts (each runs in its own process group)."""
        for bmc in self.bmcs.values():
            for name in ("hang", "soft_delay"):
                (bmc.state / name).unlink(missing_ok=True)
            try:
                os.killpg(bmc.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for bmc in self.bmcs.values():
            bmc.proc.wait(timeout=10)
        self.bmcs.clear()

"""A real Slurm mini-cluster on localhost: munged, slurmctld and one slurmd per node.

Everything lives under one directory (config, state, sockets, logs); every daemon listens on
its own free port, so a cluster can run beside another. slurmctld's power-saving programs are
small wrappers that run this checkout's ``citc-power`` with the cluster's config.

Used by the integration tests and by ``make demo``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

T = TypeVar("T")
BIN = Path(sys.executable).parent
SBIN_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]


@dataclasses.dataclass
class SimNode:
    """One node of the mini-cluster."""

    name: str
    features: str = ""  # e.g. "shape=VM.Standard.E4.Flex.4.16,ad=1"
    cloud: bool = True  # State=CLOUD; False = a static node in power save
    cpus: int = 1
    real_memory: int = 100
    port: int = 0  # chosen at start when 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_scontrol_record(line: str) -> dict[str, str]:
    """Split one line of ``scontrol show ... -o`` into its Key=Value fields."""
    parts = re.split(r"\s+(?=[A-Z][A-Za-z_:]*=)", line.strip())
    fields = {}
    for part in parts:
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


NODECTL = """#!/bin/sh
# nodectl start|stop|status NODE: start or stop the slurmd of one node of this mini-cluster.
# "start" prints the node's address (address=127.0.x.y) for citc-power to report to Slurm.
set -u
export SLURM_CONF={conf}
pidfile={run}/slurmd-$2.pid
case "$1" in
  start)
    if [ -f {root}/fail/$2 ]; then echo "code=capacity"; cat {root}/fail/$2 >&2; exit 1; fi
    case "$2" in {addresses} esac
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then exit 0; fi
    # every slurmd here shares one host name; RebootProgram, run by slurmd with no argument,
    # finds its node through this variable, which slurmd passes on
    SLURMD_NODENAME="$2" {slurmd} -b -N "$2" -f {conf} </dev/null >/dev/null 2>&1 ;;
  stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || {{ rm -f "$pidfile"; exit 0; }}
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidfile"; exit 0 ;;
  status)
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && echo on && exit 0
    echo off; exit 0 ;;
  *) echo "usage: nodectl start|stop|status NODE" >&2; exit 2 ;;
esac
"""

WRAPPER = """#!/bin/sh
# slurmctld runs this with no PATH and no environment beyond SLURM_CONF
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export CITC_POWER_CONFIG={config}
export NO_PROXY=127.0.0.1,localhost
export no_proxy=127.0.0.1,localhost
{extra_env}exec {exe} {action} "$@"
"""


class MiniCluster:
    """Start, drive and tear down a real Slurm cluster on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        nodes: list[SimNode],
        power_config: Optional[dict[str, Any]] = None,
        slurm_conf_extra: str = "",
        suspend_time: int = 10,
        resume_timeout: int = 60,
        suspend_timeout: int = 5,
        partition_extra: str = "",
        wrapper_env: Optional[dict[str, str]] = None,
    ):
        self.root = Path(root)
        self.nodes = list(nodes)
        self.run_dir = self.root / "run"
        self.slurm_conf = self.root / "slurm.conf"
        self.power_config = self.root / "power.yaml"
        self.log_file = self.root / "log" / "citc-power.log"
        self.nodectl = self.root / "bin" / "nodectl"
        self.munge_socket = self.run_dir / "munge.sock"
        self.suspend_time = suspend_time
        self.resume_timeout = resume_timeout
        self.suspend_timeout = suspend_timeout
        self.slurm_conf_extra = slurm_conf_extra
        self.partition_extra = partition_extra
        self.wrapper_env = dict(wrapper_env or {})
        self._power = power_config
        self._procs: list[subprocess.Popen[bytes]] = []
        self.ctld_port = 0
        self.env = dict(os.environ)
        self.env.update(
            SLURM_CONF=str(self.slurm_conf),
            CITC_POWER_CONFIG=str(self.power_config),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )

    def address_of(self, name: str) -> str:
        """The loopback address nodectl reports for a node: 127.0.1.<position>."""
        index = [n.name for n in self.nodes].index(name)
        return f"127.0.{1 + index // 250}.{1 + index % 250}"

    # -- set-up ---------------------------------------------------------------------------
    def default_power_config(self) -> dict[str, Any]:
        """The command provider starting and stopping each node's slurmd through nodectl."""
        return {
            "groups": [{"nodes": ",".join(n.name for n in self.nodes), "provider": "local"}],
            "providers": {
                "local": {
                    "type": "command",
                    "on": f"{self.nodectl} start {{node}}",
                    "off": f"{self.nodectl} stop {{node}}",
                    "state": f"{self.nodectl} status {{node}}",
                }
            },
        }

    def _write_files(self) -> None:
        for sub in ("state", "spool", "log", "run", "bin", "fail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.ctld_port = free_port()
        for node in self.nodes:
            node.port = node.port or free_port()
        power = dict(self._power or self.default_power_config())
        power.setdefault("log", {"file": str(self.log_file), "level": "debug"})
        self.power_config.write_text(yaml.safe_dump(power, sort_keys=False))
        self.power_config.chmod(0o600)
        addresses = " ".join(f"{n.name}) echo address={self.address_of(n.name)};;" for n in self.nodes)
        self.nodectl.write_text(NODECTL.format(conf=self.slurm_conf, run=self.run_dir, slurmd=_which("slurmd"),
                                               addresses=addresses, root=self.root))
        self.nodectl.chmod(0o755)
        extra_env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.wrapper_env.items())
        for action in ("resume", "suspend", "resume-fail", "reboot"):
            path = self.root / "bin" / action
            path.write_text(WRAPPER.format(
                config=self.power_config, exe=BIN / "citc-power", action=action, extra_env=extra_env))
            path.chmod(0o755)
        self.slurm_conf.write_text(self.render_slurm_conf())

    def render_slurm_conf(self) -> str:
        r = self.root
        lines = [
            "ClusterName=mini",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=debug",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "PrivateData=cloud",
            "DebugFlags=Power",
            "SlurmctldParameters=idle_on_node_suspend",
            f"ResumeProgram={r}/bin/resume",
            f"SuspendProgram={r}/bin/suspend",
            f"ResumeFailProgram={r}/bin/resume-fail",
            f"RebootProgram={r}/bin/reboot",
            f"SuspendTime={self.suspend_time}",
            f"SuspendTimeout={self.suspend_timeout}",
            f"ResumeTimeout={self.resume_timeout}",
            "ResumeRate=0",
            "SuspendRate=0",
            "InactiveLimit=0",
            "MinJobAge=300",
            "KillWait=5",
            "Waittime=0",
        ]
        if self.slurm_conf_extra:
            lines.append(self.slurm_conf_extra.strip())
        for n in self.nodes:
            feature = f' Feature="{n.features}"' if n.features else ""
            state = "CLOUD" if n.cloud else "UNKNOWN"
            addr = "" if n.cloud else " NodeAddr=127.0.0.1"
            lines.append(
                f"NodeName={n.name}{addr} Port={n.port} CPUs={n.cpus} RealMemory={n.real_memory}"
                f" State={state}{feature}"
            )
        names = ",".join(n.name for n in self.nodes)
        lines.append(f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP {self.partition_extra}")
        return "\n".join(lines) + "\n"

    def start(self) -> "MiniCluster":
        self._write_files()
        self._spawn([
            _which("munged"), "-F", "--force", f"--socket={self.munge_socket}",
            f"--key-file={self.root}/munge.key", f"--pid-file={self.run_dir}/munged.pid",
            f"--log-file={self.root}/log/munged.log", f"--seed-file={self.root}/munge.seed",
        ], "munged")
        self.wait_until(self.munge_socket.exists, 10, "munged to create its socket")
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.slurm_conf)], "slurmctld")
        self.wait_until(lambda: self.run(_which("scontrol"), "ping", check=False).returncode == 0,
                        20, "slurmctld to answer ping")
        # static nodes start up like real machines; SuspendTime then powers them down
        for n in self.nodes:
            if not n.cloud:
                self.start_slurmd(n.name)
        return self

    def _spawn(self, argv: list[str], name: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self._procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=self.env))
        out.close()

    def stop(self) -> None:
        """Stop every process this cluster started, including slurmd and jobs."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        me = os.getpid()
        marker = str(self.root).encode()
        for _ in range(2):
            found = False
            for pid in _pids():
                if pid == me:
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if marker in cmdline:
                    found = True
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if not found:
                return
            time.sleep(0.2)

    def __enter__(self) -> "MiniCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- driving ----------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=env or self.env, text=True, capture_output=True,
                              check=check, timeout=timeout, stdin=subprocess.DEVNULL)

    def citc(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run this checkout's citc-power against the cluster."""
        return self.run(str(BIN / "citc-power"), *args, check=check, timeout=180)

    def scontrol(self, *args: str) -> str:
        return self.run(_which("scontrol"), *args).stdout

    def sbatch(self, *args: str, script: str = "#!/bin/sh\nhostname\n") -> int:
        proc = subprocess.run([_which("sbatch"), "--parsable", *args, "-o", f"{self.root}/log/job-%j.out"],
                              input=script, env=self.env, text=True, capture_output=True,
                              check=True, timeout=30)
        return int(proc.stdout.strip().split(";")[0])

    def fail_power_on(self, name: str, message: str = "no capacity for this node") -> None:
        """Make nodectl refuse to start ``name`` (exit 1, code=capacity) until cleared."""
        (self.root / "fail" / name).write_text(message + "\n")

    def clear_failure(self, name: str) -> None:
        (self.root / "fail" / name).unlink(missing_ok=True)

    def start_slurmd(self, name: str) -> None:
        self.run(str(self.nodectl), "start", name)

    def stop_slurmd(self, name: str) -> None:
        self.run(str(self.nodectl), "stop", name)

    def slurmd_running(self, name: str) -> bool:
        return self.run(str(self.nodectl), "status", name).stdout.strip() == "on"

    def node(self, name: str) -> dict[str, str]:
        out = self.scontrol("show", "node", "-o", name).strip()
        return parse_scontrol_record(out.splitlines()[0]) if out else {}

    def node_state(self, name: str) -> str:
        return self.node(name).get("State", "")

    def sinfo_state(self, name: str) -> str:
        """The compact state sinfo shows, such as ``idle~``, ``alloc#`` or ``down~``."""
        return self.run(_which("sinfo"), "-h", "-N", "-n", name, "-o", "%t").stdout.strip()

    def job(self, jobid: int) -> dict[str, str]:
        out = self.run(_which("scontrol"), "show", "job", "-o", str(jobid), check=False).stdout.strip()
        return parse_scontrol_record(out.splitlines()[0]) if out else {}

    def job_state(self, jobid: int) -> str:
        return self.job(jobid).get("JobState", "")

    def wait_until(self, fn: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
        """Call ``fn`` until it returns something true; fail with ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.diagnostics()}")
            time.sleep(interval)

    def wait_node_state(self, name: str, pattern: str, timeout: float) -> str:
        """Wait until sinfo's compact state of ``name`` matches the regex ``pattern``."""
        return self.wait_until(lambda: (s := self.sinfo_state(name)) and re.fullmatch(pattern, s) and s,
                               timeout, f"node {name} to reach state {pattern!r}")

    def wait_job_state(self, jobid: int, states: str, timeout: float) -> str:
        return self.wait_until(lambda: (s := self.job_state(jobid)) and re.fullmatch(states, s) and s,
                               timeout, f"job {jobid} to reach {states!r}")

    def power_log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def diagnostics(self) -> str:
        """Recent logs, for assertion messages."""
        out = []
        for name in ("citc-power.log", "slurmctld.log"):
            path = self.root / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                out.append(f"--- {name} (tail)\n" + "\n".join(tail))
        sinfo = self.run(_which("sinfo"), "-N", check=False)
        out.append("--- sinfo -N\n" + sinfo.stdout + sinfo.stderr)
        return "\n".join(out)


def _which(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join(SBIN_DIRS + [os.environ.get("PATH", "")]))
    if not found:
        raise FileNotFoundError(f"{name} not found; install slurm-wlm and munge (make test does)")
    return found


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def slurm_available() -> Optional[str]:
    """None when a mini-cluster can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the Slurm mini-cluster runs slurmctld and slurmd as root"
    for name in ("munged", "slurmctld", "slurmd", "scontrol"):
        try:
            _which(name)
        except FileNotFoundError as exc:
            return str(exc)
    return None

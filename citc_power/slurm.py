"""Everything citc-power asks of Slurm, through scontrol with argument lists.

- :meth:`Slurm.read_nodes` reads features, address and state of all nodes of an invocation in
  one scontrol call.
- Updates go in batches of at most ``batch_size`` nodes per scontrol call.
- :func:`read_resume_file` reads SLURM_RESUME_FILE, which is a memfd that is gone as soon as
  the program exits: read it first.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, TypeVar

from . import hostlist
from .errors import SlurmError
from .providers.base import Node, Outcome

log = logging.getLogger(__name__)
T = TypeVar("T")

SEARCH_PATH = ["/usr/bin", "/usr/local/bin", "/opt/slurm/bin", "/usr/sbin", "/bin"]
_FIELD_SPLIT = re.compile(r"\s+(?=[A-Z][A-Za-z_:]*=)")
_VERSION = re.compile(r"(\d+)\.(\d+)")
REASON_MAX = 200  # long reasons are cut; the log keeps the whole message


def parse_record(line: str) -> dict[str, str]:
    """Split one line of ``scontrol show ... -o`` into its Key=Value fields."""
    fields = {}
    for part in _FIELD_SPLIT.split(line.strip()):
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


def parse_features(text: str) -> dict[str, str]:
    """``shape=VM.Standard2.1,ad=1,gpu`` -> {"shape": "VM.Standard2.1", "ad": "1", "gpu": ""}."""
    if not text or text == "(null)":
        return {}
    features = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key:
            features[key.strip()] = value.strip()
    return features


def node_from_record(fields: Mapping[str, str]) -> Node:
    name = fields.get("NodeName", "")
    addr = fields.get("NodeAddr", "")
    host = fields.get("NodeHostName", "")
    reason = fields.get("Reason", "")
    reason = re.sub(r"\s*\[[^\]]*@[^\]]*\]$", "", reason)  # drop " [root@2026-01-01T00:00:00]"
    return Node(
        name=name,
        features=parse_features(fields.get("AvailableFeatures", "")),
        address=addr if addr and addr != name else None,
        hostname=host if host and host != name else None,
        state=fields.get("State", ""),
        reason=reason,
    )


def parse_version(text: str) -> Optional[tuple[int, int]]:
    """(major, minor) from ``slurm-wlm 22.05.8`` or ``slurm 23.11.1``."""
    match = _VERSION.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def reason_text(code: str, message: str) -> str:
    """The reason Slurm shows for a node we could not power: ``citc:<code> <message>``."""
    text = " ".join(f"citc:{code} {message}".split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_resume_file(path: Optional[str] = None) -> dict[str, list[int]]:
    """Map node name -> ids of the jobs waiting for it, from SLURM_RESUME_FILE.

    Returns {} when there is no such file (Slurm < 22.05, or run by hand). A broken file is
    logged and ignored: it must never stop nodes from being powered.
    """
    path = path if path is not None else os.environ.get("SLURM_RESUME_FILE")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
        jobs: dict[str, list[int]] = {}
        for job in data.get("jobs", []):
            for name in hostlist.expand(job.get("nodes", "") or job.get("nodes_resume", "")):
                jobs.setdefault(name, []).append(int(job["job_id"]))
        return jobs
    except Exception as exc:  # the file is advisory; powering the nodes matters more
        log.warning("cannot read SLURM_RESUME_FILE %s: %s", path, exc)
        return {}


class Slurm:
    """A thin wrapper around scontrol. Every call has a timeout; failures raise SlurmError."""

    def __init__(self, bin_dir: Optional[Path] = None, timeout: float = 60.0, batch_size: int = 100):
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.batch_size = batch_size
        self.has_instance_fields = False

    def _tool(self, name: str) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / name)
        found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH_PATH))
        if not found:
            raise SlurmError(f"{name} not found in PATH or {', '.join(SEARCH_PATH)}; set slurm.bin_dir in the config")
        return found

    def run(self, tool: str, *args: str) -> str:
        argv = [self._tool(tool), *args]
        log.debug("running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{tool} {' '.join(args[:3])} timed out after {self.timeout:.0f}s") from None
        except OSError as exc:
            raise SlurmError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SlurmError(f"{tool} {' '.join(args)} failed: {detail[-1] if detail else proc.returncode}")
        return proc.stdout

    def version(self) -> Optional[tuple[int, int]]:
        """(major, minor) of the installed Slurm, or None if it cannot be told."""
        # slurmctld -V needs no config; scontrol --version does (22.05), but is also on non-controllers
        for tool, flag in (("slurmctld", "-V"), ("scontrol", "--version")):
            try:
                found = parse_version(self.run(tool, flag))
            except SlurmError:
                continue
            if found:
                return found
        return None

    # -- reading ----------------------------------------------------------------------------
    def read_nodes(self, names: Sequence[str]) -> dict[str, Node]:
        """Features, address and state of ``names``, read with one scontrol call.

        Nodes Slurm does not list (unknown, or hidden powered-down CLOUD nodes when
        PrivateData=cloud is not set) are missing from the result.
        """
        if not names:
            return {}
        wanted = set(names)
        out = self.run("scontrol", "show", "node", "-o")
        nodes = {}
        for line in out.splitlines():
            if not line.startswith("NodeName="):
                continue
            fields = parse_record(line)
            self.has_instance_fields = self.has_instance_fields or "InstanceId" in fields
            if fields.get("NodeName") in wanted:
                node = node_from_record(fields)
                nodes[node.name] = node
        return nodes

    # -- updating ---------------------------------------------------------------------------
    def update(self, names: Sequence[str], **fields: str) -> None:
        """``scontrol update nodename=<names> key=value ...`` in batches."""
        for batch in batches(list(names), self.batch_size):
            args = [f"nodename={hostlist.collapse(batch)}"] + [f"{k}={v}" for k, v in fields.items()]
            self.run("scontrol", "update", *args)

    def report_addresses(self, outcomes: Sequence[Outcome]) -> None:
        """Tell Slurm the address, hostname (and instance id/type where Slurm has them).

        One scontrol call per batch: Slurm takes comma lists matched to the nodes in order.
        Nodes with no address to report keep theirs.
        """
        with_addr = [o for o in outcomes if o.ok and o.address]
        for batch in batches(with_addr, self.batch_size):
            args = [
                f"nodename={','.join(o.node for o in batch)}",
                f"nodeaddr={','.join(o.address or '' for o in batch)}",
                f"nodehostname={','.join(o.hostname or o.node for o in batch)}",
            ]
            if self.has_instance_fields and all(o.instance_id for o in batch):
                args.append(f"instanceid={','.join(o.instance_id or '' for o in batch)}")
                if all(o.instance_type for o in batch):
                    args.append(f"instancetype={','.join(o.instance_type or '' for o in batch)}")
            self.run("scontrol", "update", *args)

    def set_down(self, names: Sequence[str], reason: str) -> None:
        self.update(names, state="DOWN", reason=reason)

    def power_down(self, names: Sequence[str], force: bool = True) -> None:
        """Return nodes to service as powered down, so they are not left ``down~``."""
        self.update(names, state="POWER_DOWN_FORCE" if force else "POWER_DOWN")

    def resume(self, names: Sequence[str]) -> None:
        self.update(names, state="RESUME")

    def comment_jobs(self, job_ids: Iterable[int], text: str) -> None:
        """Put ``text`` in the admin comment of each job (what sacct and scontrol show)."""
        for job_id in sorted(set(job_ids)):
            self.run("scontrol", "update", f"jobid={job_id}", f"admincomment={text}")

    def reconfigure(self) -> None:
        self.run("scontrol", "reconfigure")


def outcomes_by_reason(outcomes: Iterable[Outcome]) -> dict[str, list[str]]:
    """Group failed nodes by the reason Slurm will show, so each reason is one scontrol call."""
    groups: dict[str, list[str]] = {}
    for o in outcomes:
        if not o.ok:
            groups.setdefault(reason_text(o.code, o.message), []).append(o.node)
    return groups

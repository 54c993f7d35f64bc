#!/usr/bin/env python3
"""A live tour: a real Slurm mini-cluster on localhost whose nodes citc-power powers up and down.

Starts munged, slurmctld and four CLOUD nodes (powered down), submits jobs, and prints every
node state change as Slurm reports it, with what citc-power did. Then tears everything down.
Run as root: ``make demo``.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from minicluster import MiniCluster, SimNode, slurm_available  # noqa: E402

MEANING = {
    "idle~": "powered down; Slurm will run citc-power resume when a job needs it",
    "alloc#": "allocated to a job and powering up: citc-power resume is starting it",
    "mix#": "allocated to a job and powering up: citc-power resume is starting it",
    "alloc~": "allocated to a job; slurmctld is about to run citc-power resume",
    "alloc": "up: slurmd registered at the address citc-power reported; the job runs",
    "mix": "up and running part of a job",
    "idle": "job done; idle until SuspendTime passes",
    "idle%": "powering down: citc-power suspend is stopping it",
    "down#": "DOWN: citc-power could not start it and told Slurm why; the job is requeued",
    "down~": "DOWN and powered down",
    "down!": "DOWN at ResumeTimeout; slurmctld runs citc-power resume-fail, which cleans up",
    "comp": "job completing",
}


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    reason = slurm_available()
    if reason:
        say(f"demo: cannot run here: {reason}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="citc-demo-", dir="/tmp"))
    nodes = [SimNode(f"cn{i}", features=f"shape=VM.Standard2.1,ad={1 + i % 3}") for i in range(1, 5)]
    cluster = MiniCluster(root, nodes, suspend_time=10, resume_timeout=20)
    say(f"Starting a Slurm mini-cluster in {root}: munged, slurmctld, 4 CLOUD nodes (all powered down).")
    say("Its ResumeProgram/SuspendProgram/ResumeFailProgram run citc-power with the 'command' provider,")
    say("which starts or stops each node's slurmd and reports a 127.0.1.x address for it.\n")
    with cluster:
        cluster.fail_power_on("cn4", "Out of host capacity (simulated)")
        names = [n.name for n in nodes]
        jobs = {
            cluster.sbatch("-N2", "-w", "cn[1-2]", script="#!/bin/sh\nsleep 3\n"): "2 nodes, cn[1-2]",
            cluster.sbatch("-N1", "-w", "cn3", script="#!/bin/sh\nsleep 3\n"): "1 node, cn3",
            cluster.sbatch("-N1", "-w", "cn4", "--no-requeue", script="#!/bin/sh\nsleep 3\n"):
                "1 node, cn4 (its power-on will fail)",
        }
        for job, what in jobs.items():
            say(f"submitted job {job}: {what}")
        say("")
        watch(cluster, names, jobs)
        say("\nWhat citc-power logged (one line per event, each naming its nodes):")
        for line in cluster.power_log().splitlines():
            if " DEBUG " not in line:
                say("  " + line.split("] ", 1)[-1])
    say("\nMini-cluster stopped and removed.")
    return 0


def watch(cluster: MiniCluster, names: list[str], jobs: dict[int, str], limit: float = 150) -> None:
    seen: dict[str, str] = {}
    start = time.monotonic()
    while time.monotonic() - start < limit:
        for name in names:
            state = cluster.sinfo_state(name)
            if state and state != seen.get(name):
                seen[name] = state
                note = MEANING.get(state.rstrip("*"), "")
                extra = ""
                if state.startswith("alloc") and "#" not in state and "~" not in state:
                    extra = f" [NodeAddr={cluster.node(name).get('NodeAddr')}]"
                if state.startswith("down"):
                    extra = f" [Reason={cluster.node(name).get('Reason', '').split(' [')[0]}]"
                say(f"{time.monotonic() - start:6.1f}s  {name:<4} {state:<7} {note}{extra}")
        done = all(cluster.job_state(j) in ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL") for j in jobs)
        if done and all(seen.get(n) == "idle~" for n in names):
            break
        time.sleep(0.5)
    for job in jobs:
        info = cluster.job(job)
        comment = info.get("AdminComment", "")
        say(f"job {job}: {info.get('JobState')}" + (f" - admin comment: {comment}" if comment and comment != "(null)" else ""))


if __name__ == "__main__":
    sys.exit(main())

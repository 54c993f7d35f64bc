"""The power-save pipeline against a real slurmctld and real slurmd processes.

The nodes are powered by the ``command`` provider, which starts and stops each node's slurmd
through the mini-cluster's nodectl and reports a 127.0.1.x address for it.
"""
import re
import time

import pytest

from minicluster import SimNode

pytestmark = pytest.mark.slurm


def test_job_on_cloud_and_static_nodes_powers_them_up_then_down(minicluster):
    cluster = minicluster([SimNode("cn1", features="shape=VM.Standard2.1,ad=1"), SimNode("cn2"), SimNode("cn3"),
                           SimNode("st1", cloud=False)], suspend_time=10)
    assert {cluster.sinfo_state(n) for n in ("cn1", "cn2", "cn3")} == {"idle~"}
    cluster.wait_node_state("st1", r"idle~", 45)

    cloud_job = cluster.sbatch("-N2", "-w", "cn[1-2]")
    static_job = cluster.sbatch("-N1", "-w", "st1")
    cluster.wait_job_state(cloud_job, "COMPLETED", 90)
    cluster.wait_job_state(static_job, "COMPLETED", 90)

    # the nodes registered at the addresses our resume reported, not at their names
    for name in ("cn1", "cn2", "st1"):
        assert cluster.node(name)["NodeAddr"] == cluster.address_of(name)
    log = cluster.power_log()
    assert re.search(r"\[\d+ \w+ resume\] citc_power.actions: resume cn1: done address=127.0.1.1", log)
    assert cluster.sinfo_state("cn3") == "idle~"  # never asked for, never powered

    for name in ("cn1", "cn2", "st1"):
        cluster.wait_node_state(name, r"idle~", 60)
        assert not cluster.slurmd_running(name)
    assert re.search(r"suspend cn\[1-2\]|suspend cn1", cluster.power_log())


def test_failed_power_on_marks_the_node_down_at_once_and_the_job_runs_elsewhere(minicluster):
    cluster = minicluster([SimNode("cn1"), SimNode("cn2")], resume_timeout=20, suspend_time=10)
    cluster.fail_power_on("cn1", "Out of host capacity")
    job = cluster.sbatch("-N1")

    reason = cluster.wait_until(
        lambda: (r := cluster.node("cn1").get("Reason", "")).startswith("citc:") and r, 15, "cn1 to be set DOWN")
    resumed_at = _log_time(cluster.power_log(), "resume cn1")
    down_at = _log_time(cluster.power_log(), "cn1: set DOWN")
    assert down_at - resumed_at < 5, "the node must be DOWN at once, not after ResumeTimeout"
    assert reason.startswith("citc:capacity on command exited 1: Out of host capacity")
    assert "DOWN" in cluster.node("cn1")["State"]

    info = cluster.wait_until(lambda: (j := cluster.job(job)).get("Restarts") == "1" and j, 15, "the job to be requeued")
    assert info["JobState"] == "PENDING"
    assert "could not start node(s) cn1: citc:capacity" in info["AdminComment"]

    # at ResumeTimeout slurmctld runs our resume-fail, which returns the node to service powered down
    cluster.clear_failure("cn1")
    cluster.wait_node_state("cn1", r"idle~", 60)
    assert "resume-fail cn1: returned to service powered down" in cluster.power_log()

    cluster.scontrol("update", f"jobid={job}", "starttime=now")  # skip the requeue hold
    cluster.wait_job_state(job, "COMPLETED", 90)
    assert cluster.job(job)["NodeList"] in ("cn1", "cn2")


def test_startnode_and_stopnode_by_hand(minicluster):
    cluster = minicluster([SimNode("cn1"), SimNode("cn2")], suspend_time=300)
    started = cluster.run(str(cluster_bin("startnode")), "cn2", check=False)
    assert started.returncode == 0, started.stderr
    assert re.match(r"cn2\s+ok\s+address=127\.0\.1\.2", started.stdout)
    assert cluster.slurmd_running("cn2")
    assert cluster.node("cn2")["NodeAddr"] == "127.0.1.2"

    dry = cluster.run(str(cluster_bin("stopnode")), "--dry-run", "cn[1-2]", check=False)
    assert dry.returncode == 0
    assert "would use provider local" in dry.stdout
    assert cluster.slurmd_running("cn2")

    stopped = cluster.run(str(cluster_bin("stopnode")), "cn2", check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert re.match(r"cn2\s+ok", stopped.stdout)
    assert not cluster.slurmd_running("cn2")


def test_bad_input_changes_nothing_in_slurm(minicluster):
    cluster = minicluster([SimNode("cn1")], suspend_time=300)
    before = cluster.node("cn1")
    for argv in (["startnode", "cn[1-"], ["startnode", "gpu1"], ["citc-power", "start", "--config", "/nope.yaml", "cn1"]):
        proc = cluster.run(str(cluster_bin(argv[0])), *argv[1:], check=False)
        assert proc.returncode == 2, proc
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not cluster.slurmd_running("cn1")
    after = cluster.node("cn1")
    assert (after["State"], after["NodeAddr"], after.get("Reason")) == (before["State"], before["NodeAddr"], before.get("Reason"))


def cluster_bin(name):
    import sys
    from pathlib import Path

    return Path(sys.executable).parent / name


def _log_time(log: str, text: str) -> float:
    for line in log.splitlines():
        if text in line:
            stamp = line[:23]
            return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000
    raise AssertionError(f"{text!r} not in the log:\n{log}")

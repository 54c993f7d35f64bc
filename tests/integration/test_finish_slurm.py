"""finish against a real slurmctld: the node lines it writes are what Slurm 22.05 accepts.

The mini-cluster's slurm.conf is the harness's, without its nodes and partition, with the
"# STARTNODES" / "# ENDNODES" markers; the ``finish`` console script fills them before
slurmctld starts.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from minicluster import MiniCluster, parse_scontrol_record, slurm_available

pytestmark = pytest.mark.slurm

FINISH = Path(sys.executable).parent / "finish"
SPARSE = [f"bm{n:04d}" for n in range(1, 1200, 2)]  # no two adjacent: a long hostlist
LIMITS = f"""
VM.Standard.E4.Flex.16.128:
  1: 400
  2: 400
VM.Standard2.1: 150
BM.GPU4.8:
  3: 2
groups:
  - nodes: "{','.join(SPARSE)}"
    sockets: 2
    cores_per_socket: 8
    threads_per_core: 2
    memory: 64G
    features: {{rack: r7}}
  - nodes: "fat[1-2]"
    cpus: 4
    real_memory: 3000
    state: static
    options: {{NodeAddr: "127.0.0.[1-2]"}}   # a static node must resolve; these are not in DNS
partitions:
  compute: {{default: true}}
  gpu:
    shapes: [BM.GPU4.8]
    options: {{MaxTime: INFINITE}}
"""
TOTAL = 800 + 150 + 2 + len(SPARSE) + 2


class FinishCluster(MiniCluster):
    """A mini-cluster whose nodes and partitions come from ``finish``."""

    def __init__(self, root: Path, limits: str, **kwargs: object):
        super().__init__(root, nodes=[], **kwargs)  # type: ignore[arg-type]
        self.limits = root / "limits.yaml"
        self.limits_text = limits
        self.finish_output = ""

    def render_slurm_conf(self) -> str:
        lines = [line for line in super().render_slurm_conf().splitlines()
                 if not line.startswith(("NodeName=", "PartitionName="))]
        return "\n".join(lines + ["GresTypes=gpu", "# STARTNODES", "# ENDNODES"]) + "\n"

    def _write_files(self) -> None:
        super()._write_files()
        self.limits.write_text(self.limits_text)
        proc = subprocess.run([str(FINISH), str(self.limits), "--slurm-conf", str(self.slurm_conf),
                               "--no-reconfigure"], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.finish_output = proc.stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[FinishCluster]:
    reason = slurm_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"real-Slurm tests cannot run in CI: {reason}")
        pytest.skip(reason)
    if not FINISH.exists():
        pytest.skip("the finish console script is not installed (pip install -e .)")
    root = Path(tempfile.mkdtemp(prefix="mini-", dir="/tmp"))
    c = FinishCluster(root, LIMITS)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def nodes(c: FinishCluster) -> dict[str, dict[str, str]]:
    out = c.scontrol("show", "node", "-o")
    records = [parse_scontrol_record(line) for line in out.splitlines() if line.startswith("NodeName=")]
    return {r["NodeName"]: r for r in records}


def test_slurmctld_accepts_every_node_finish_writes(cluster: FinishCluster):
    found = nodes(cluster)
    assert len(found) == TOTAL
    node_lines = [line for line in cluster.slurm_conf.read_text().splitlines() if line.startswith("NodeName=")]
    assert len(node_lines) < 12  # 1556 nodes, a handful of lines


def test_cloud_nodes_show_their_shape_features_and_memory(cluster: FinishCluster):
    found = nodes(cluster)
    flex = found["vm-standard-e4-flex-16-128-ad2-0400"]
    assert flex["AvailableFeatures"] == "shape=VM.Standard.E4.Flex.16.128,ad=2,arch=x86_64"
    assert set(flex["State"].split("+")) >= {"CLOUD", "POWERED_DOWN"}
    assert (flex["CPUTot"], flex["RealMemory"], flex["ThreadsPerCore"]) == ("32", "124518", "2")
    gpu = found["bm-gpu4-8-ad3-0002"]
    assert gpu["Gres"] == "gpu:8" and gpu["Partitions"] == "compute,gpu"
    plain = found["vm-standard2-1-0150"]
    assert plain["AvailableFeatures"] == "shape=VM.Standard2.1,arch=x86_64"


def test_explicit_groups_keep_their_names_facts_and_state(cluster: FinishCluster):
    found = nodes(cluster)
    assert all(name in found for name in SPARSE)
    bm = found[SPARSE[-1]]
    assert bm["AvailableFeatures"] == "rack=r7" and bm["CPUTot"] == "32" and "CLOUD" in bm["State"]
    fat = found["fat2"]
    assert "CLOUD" not in fat["State"] and fat["RealMemory"] == "3000" and fat["NodeAddr"] == "127.0.0.2"


def test_partitions_hold_the_nodes_finish_gave_them(cluster: FinishCluster):
    compute = parse_scontrol_record(cluster.scontrol("show", "partition", "compute", "-o").strip())
    gpu = parse_scontrol_record(cluster.scontrol("show", "partition", "gpu", "-o").strip())
    assert compute["TotalNodes"] == str(TOTAL) and compute["Default"] == "YES"
    assert gpu["Nodes"] == "bm-gpu4-8-ad3-[0001-0002]" and gpu["MaxTime"] == "UNLIMITED"


def test_first_run_says_slurm_22_05_must_restart_for_new_nodes(cluster: FinishCluster):
    version = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True, check=True).stdout
    if not version.split()[-1].startswith("22.05"):
        pytest.skip(f"this check is about Slurm 22.05, not {version.strip()}")
    assert "restart slurmctld now: Slurm 22.05 reads its node list only when it starts" in cluster.finish_output


def test_changed_features_reach_slurmctld_through_reconfigure(cluster: FinishCluster):
    cluster.limits.write_text(LIMITS.replace("rack: r7", "rack: r8"))
    proc = subprocess.run([str(FINISH), str(cluster.limits), "--slurm-conf", str(cluster.slurm_conf)],
                          capture_output=True, text=True, timeout=120, check=False, env=cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "ran scontrol reconfigure"
    cluster.wait_until(lambda: nodes(cluster)[SPARSE[0]]["AvailableFeatures"] == "rack=r8", 30,
                       "the new feature after scontrol reconfigure")
    assert len(nodes(cluster)) == TOTAL

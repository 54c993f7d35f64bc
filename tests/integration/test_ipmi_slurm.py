"""Bare-metal nodes powered over IPMI by a real slurmctld: ipmi_sim BMCs start and stop slurmd.

Each node's BMC is an ipmi_sim whose chassis runs ``nodectl start|stop NODE`` when its power
changes, so a node powered up over IPMI boots (its slurmd starts) and registers with Slurm.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from minicluster import SimNode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers"))
from ipmisim import IpmiSimFarm, free_udp_ports

pytestmark = pytest.mark.slurm


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[IpmiSimFarm]:
    sims = IpmiSimFarm(tmp_path / "bmcs")
    try:
        yield sims
    finally:
        sims.stop()


def test_job_runs_on_bare_metal_nodes_powered_over_ipmi_which_power_off_when_idle(
    minicluster, farm: IpmiSimFarm, tmp_path: Path
) -> None:
    ports = dict(zip(("bm1", "bm2"), free_udp_ports(2)))
    password = tmp_path / "ipmi.pw"
    password.write_text(farm.password)
    password.chmod(0o600)
    manifest = tmp_path / "bmc.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                name: {"address": "127.0.0.1", "port": port, "password_file": str(password)}
                for name, port in ports.items()
            }
        )
    )
    power_config = {
        "groups": [{"nodes": "bm[1-2]", "provider": "bmc"}],
        "providers": {
            "bmc": {
                "type": "ipmi",
                "manifest": str(manifest),
                "username": farm.username,
                # bm1 keeps the NodeAddr of slurm.conf; bm2 is a CLOUD node and gets one from us
                "node_address": {"bm2": "127.0.1.2"},
                "timeout": 10,
                "soft_off_timeout": 5,
                "verify_timeout": 5,
            }
        },
    }
    # bm1 is a static node that is up at start (its slurmd runs), bm2 a CLOUD node that is off
    cluster = minicluster(
        [SimNode("bm1", cloud=False), SimNode("bm2")], power_config=power_config, suspend_time=10
    )
    farm.hook = cluster.nodectl
    (bm1,) = farm.start(["bm1"], on=True, ports=[ports["bm1"]])
    (bm2,) = farm.start(["bm2"], on=False, ports=[ports["bm2"]])

    # idle for SuspendTime: slurmctld's SuspendProgram shuts bm1 down over IPMI
    cluster.wait_node_state("bm1", r"idle~", 60)
    cluster.wait_until(
        lambda: bm1.power == 0 and not cluster.slurmd_running("bm1"),
        20,
        "bm1's BMC to be off and its slurmd stopped",
    )
    assert "set shutdown 1" in bm1.calls()

    job = cluster.sbatch("-N2", "-w", "bm[1-2]")
    cluster.wait_job_state(job, "COMPLETED", 120)

    assert "set power 1" in bm1.calls() and "set power 1" in bm2.calls()
    assert cluster.node("bm1")["NodeAddr"] == "127.0.0.1"
    assert cluster.node("bm2")["NodeAddr"] == "127.0.1.2"
    log = cluster.power_log()
    assert "bm1: power on: powered on (BMC 127.0.0.1:" in log
    assert "bm2: power on: powered on (BMC 127.0.0.1:" in log
    assert farm.password not in log

    # idle again: both are shut down over IPMI after SuspendTime
    for name, bmc in (("bm1", bm1), ("bm2", bm2)):
        cluster.wait_node_state(name, r"idle~", 60)
        cluster.wait_until(lambda b=bmc: b.power == 0, 20, f"{name}'s BMC to be off")
        assert not cluster.slurmd_running(name)
    assert bm2.calls().count("set shutdown 1") == 1

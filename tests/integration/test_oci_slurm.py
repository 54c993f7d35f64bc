"""OCI nodes run by a real slurmctld: resume launches instances, Slurm learns their addresses.

The OCI API emulator (tests/providers/oci_emulator.py), reached through the real oci SDK,
plays the machines: when an instance turns RUNNING its node's slurmd starts (``nodectl
start``), when it is terminated the slurmd stops. The emulator gives instances 127.0.x.y
addresses that nothing else knows, so a job that runs proves that the address went from the
VNIC through citc-power into Slurm's NodeAddr.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from minicluster import SimNode, _which

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers"))
from oci_emulator import OciEmulator, write_oci_config  # noqa: E402

pytestmark = pytest.mark.slurm
pytest.importorskip("oci")


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[OciEmulator, Path]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    config, public_key = write_oci_config(tmp_path)
    emulator = OciEmulator(provision_delay=1.0, terminate_delay=0.5, public_key=public_key,
                           images={"ocid1.image.oc1..citc": "citc-compute"}).start()
    try:
        yield emulator, config
    finally:
        emulator.stop()


def machine(nodectl: Path, action: str) -> Any:
    """A hook that starts or stops the slurmd of the instance's node, as its machine would."""

    def hook(instance: dict[str, Any]) -> None:
        name = instance["displayName"]
        env = {**os.environ, "SLURMD_NODENAME": name}
        subprocess.run([str(nodectl), action, name], env=env, check=False, capture_output=True)

    return hook


def test_job_runs_on_two_oci_nodes_at_the_addresses_their_vnics_report(minicluster, cloud) -> None:
    emu, oci_config = cloud
    power_config = {
        "groups": [{"nodes": "oc[1-2]", "provider": "oci"}],
        "providers": {
            "oci": {
                "type": "oci",
                "config_file": str(oci_config),  # slurmctld runs citc-power without ~/.oci
                "endpoint": emu.url,
                "compartment": "ocid1.compartment.oc1..mini",
                "subnet": "ocid1.subnet.oc1..mini",
                "image": "citc-compute",
                "cluster": "mini",
                "poll_interval": 0.2,
                "launch_timeout": 45,  # below ResumeTimeout
                "max_requests_per_second": 20,
            }
        },
    }
    cluster = minicluster(
        [SimNode("oc1", features="shape=VM.Standard.E4.Flex.1.4,ad=1"),
         SimNode("oc2", features="shape=VM.Standard2.1,ad=2")],
        power_config=power_config, suspend_time=10, resume_timeout=60,
    )
    emu.on_running = machine(cluster.nodectl, "start")
    emu.on_terminated = machine(cluster.nodectl, "stop")

    job = cluster.run(_which("srun"), "-N2", "-w", "oc[1-2]", "hostname", timeout=90, check=False)
    assert job.returncode == 0, job.stderr + cluster.diagnostics()

    instances = {name: emu.live_instances(name) for name in ("oc1", "oc2")}
    assert all(len(found) == 1 for found in instances.values()), instances
    for name, (instance,) in instances.items():
        address = emu.private_ip(instance["id"])
        assert address.startswith("127.0.") and address != cluster.address_of(name)
        assert cluster.node(name)["NodeAddr"] == address
    assert instances["oc1"][0]["shape"] == "VM.Standard.E4.Flex"
    assert instances["oc1"][0]["availabilityDomain"] == "Uocm:EMU-AD-1"
    assert instances["oc2"][0]["availabilityDomain"] == "Uocm:EMU-AD-2"
    assert emu.received["LaunchInstance"] == 2

    # idle for SuspendTime: Slurm suspends the nodes and citc-power terminates their instances
    cluster.wait_until(lambda: not emu.live_instances() or all(
        i["lifecycleState"] == "TERMINATING" for i in emu.live_instances()), 90, "instances to be terminated")
    cluster.wait_node_state("oc1", r"idle~", 60)
    assert emu.handled["TerminateInstance"] == 2
    assert "oc1: launching VM.Standard.E4.Flex in Uocm:EMU-AD-1" in cluster.power_log()

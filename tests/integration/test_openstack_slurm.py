"""OpenStack nodes run by a real slurmctld: resume creates servers, ``scontrol reboot`` rebuilds one.

The emulated cloud (tests/providers/openstack_emulator.py) plays the machines: when a server
becomes ACTIVE its node's slurmd starts (``nodectl start``), when it goes down for a reboot or
rebuild, or is deleted, the slurmd stops. slurmd runs RebootProgram (``citc-power reboot`` with
no argument) on the node itself, as on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from minicluster import SimNode, _which

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers"))
from openstack_emulator import EmulatedServer, OpenStackEmulator

pytestmark = [pytest.mark.slurm, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    emulator = OpenStackEmulator(build_seconds=1.0, rebuild_seconds=1.0, reboot_seconds=1.0).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def machine_hooks(nodectl: Path) -> dict[str, Callable[[EmulatedServer], object]]:
    """Servers that boot and stop the node's slurmd, as the cloud's machines would."""

    def boot(server: EmulatedServer) -> None:
        # every slurmd here shares one hostname; the variable gives each "machine" its own
        # name, which RebootProgram (run by slurmd, with slurmd's environment) needs
        env = {**os.environ, "SLURMD_NODENAME": server.name}
        subprocess.run([str(nodectl), "start", server.name], env=env, check=False, capture_output=True)

    def halt(server: EmulatedServer) -> None:
        subprocess.run([str(nodectl), "stop", server.name], check=False, capture_output=True)

    return {"active": boot, "down": halt, "deleted": halt}


def test_scontrol_reboot_rebuilds_only_that_server_with_the_new_image_and_the_node_returns(
    minicluster, cloud: OpenStackEmulator, tmp_path: Path
) -> None:
    clouds = cloud.write_clouds_yaml(tmp_path / "clouds.yaml", cloud="site")
    power_config = {
        "groups": [{"nodes": "os[1-2]", "provider": "openstack"}],
        "providers": {
            "openstack": {
                "type": "openstack",
                # slurmctld and slurmd run citc-power with no OS_* environment
                "clouds_file": str(clouds),
                "cloud": "site",
                "cluster": "mini",
                "image": "rocky-9",
                "flavor": "m1.small",
                "network": "cluster-net",
                "poll_interval": 0.2,
                "active_timeout": 30,
            }
        },
    }
    cluster = minicluster(
        [SimNode("os1"), SimNode("os2", features="flavor=m1.large")],
        power_config=power_config,
        suspend_time=600,  # the nodes must stay up: scontrol reboot ignores powered-down nodes
        resume_timeout=60,
    )
    cloud.hooks = machine_hooks(cluster.nodectl)
    srun = _which("srun")

    # a job powers both nodes up: two servers, each at the address Slurm was told
    first = cluster.run(srun, "-N2", "-w", "os[1-2]", "hostname", timeout=90, check=False)
    assert first.returncode == 0, first.stderr + cluster.diagnostics()
    servers = {name: cloud.live(name)[0] for name in ("os1", "os2")}
    assert {c["name"]: c["flavorRef"] for c in cloud.creates} == {
        "os1": cloud.flavors["m1.small"]["id"],
        "os2": cloud.flavors["m1.large"]["id"],
    }
    for name, server in servers.items():
        assert cluster.node(name)["NodeAddr"] == server.address
    cluster.wait_node_state("os1", r"idle", 30)

    cluster.scontrol("reboot", "ASAP", "nextstate=resume", "reason=rebuild image:rocky-9-new", "os1")
    new_image = cloud.image_id("rocky-9-new")
    cluster.wait_until(lambda: cloud.rebuilds, 60, "os1's server to be rebuilt")
    cluster.wait_node_state("os1", r"idle", 90)

    assert cloud.rebuilds == [("os1", servers["os1"].id, new_image)]
    assert cloud.reboots == [] and len(cloud.creates) == 2 and cloud.deletes == []
    assert cloud.live("os1")[0].image_id == new_image
    assert cloud.live("os2")[0].image_id == cloud.image_id("rocky-9")
    node = cluster.node("os1")
    assert "DRAIN" not in node["State"] and "REBOOT" not in node["State"], node
    assert not node.get("Reason"), node  # nextstate=resume: the rebuild request is done with
    assert "os1: rebuilding server" in cluster.power_log()

    # back in service: a job runs on the rebuilt node
    again = cluster.run(srun, "-w", "os1", "hostname", timeout=60, check=False)
    assert again.returncode == 0, again.stderr + cluster.diagnostics()

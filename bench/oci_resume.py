#!/usr/bin/env python3
"""How close the OCI provider brings N nodes up to the time OCI's rate limit allows.

Starts the OCI API emulator (tests/providers/oci_emulator.py) with a server-side rate limit
and added latency, then powers N nodes on through the real oci SDK, twice over on fresh
emulators:

1. citc-power's OciProvider (paced, batched polling, its own retries);
2. a baseline in the style of citc's old resume program: one asyncio task per node, each
   launching its instance and polling it with GetInstance, the SDK's default retry strategy
   doing the retries.

Figures printed for our provider: wall time; the rate bound, that is the requests the server
accepted divided by its rate (no client can finish those requests sooner); their ratio
(goal <= 1.15); requests per node (goal <= 3); and the speed-up over the baseline (goal >= 3x).

    python3 bench/oci_resume.py [--nodes 500] [--rate 50] [--latency 0.1] [--no-baseline]
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "providers"))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import oci  # noqa: E402
from oci_emulator import OciEmulator, write_oci_config  # noqa: E402

from citc_power.providers.base import Node  # noqa: E402
from citc_power.providers.oci import OciProvider  # noqa: E402

COMPARTMENT = "ocid1.compartment.oc1..bench"
SUBNET = "ocid1.subnet.oc1..bench"
IMAGE = "ocid1.image.oc1..bench"
SHAPE = "VM.Standard.E4.Flex.4.16"


def emulator(args: argparse.Namespace) -> OciEmulator:
    emu = OciEmulator(provision_delay=args.provision_delay, page_size=args.page_size, public_key=True)
    emu.faults.rate_limit = args.rate
    emu.faults.rate_burst = args.rate / 5
    emu.faults.latency = args.latency
    return emu.start()


def bench_ours(args: argparse.Namespace, config: Path) -> dict[str, Any]:
    emu = emulator(args)
    try:
        provider = OciProvider.from_settings("bench", {
            "type": "oci", "config_file": str(config), "compartment": COMPARTMENT, "subnet": SUBNET,
            "image": IMAGE, "cluster": "bench", "endpoint": emu.url, "max_requests_per_second": args.rate,
            "concurrency": args.concurrency, "poll_interval": args.poll_interval, "launch_timeout": 600,
        })
        nodes = [Node(f"cn{i:04d}", {"shape": SHAPE, "ad": "Uocm:EMU-AD-1"}) for i in range(args.nodes)]

        async def run() -> list:
            try:
                return await provider.power_on(nodes)
            finally:
                await provider.close()

        start = time.monotonic()
        outcomes = asyncio.run(run())
        wall = time.monotonic() - start
        return figures(emu, wall, sum(o.ok for o in outcomes), args)
    finally:
        emu.stop()


def bench_baseline(args: argparse.Namespace, config: Path) -> dict[str, Any]:
    """One task per node, SDK default retries, per-node polling (citc's old resume program)."""
    emu = emulator(args)
    try:
        cfg = oci.config.from_file(str(config))
        strategy = oci.retry.DEFAULT_RETRY_STRATEGY
        compute = oci.core.ComputeClient(cfg, service_endpoint=emu.url, retry_strategy=strategy)
        network = oci.core.VirtualNetworkClient(cfg, service_endpoint=emu.url, retry_strategy=strategy)
        pool = concurrent.futures.ThreadPoolExecutor(args.baseline_threads)

        async def start_node(name: str) -> bool:
            loop = asyncio.get_running_loop()

            def sdk(fn: Any, *a: Any, **kw: Any) -> Any:
                return loop.run_in_executor(pool, lambda: fn(*a, **kw))

            details = oci.core.models.LaunchInstanceDetails(
                compartment_id=COMPARTMENT, availability_domain="Uocm:EMU-AD-1", display_name=name,
                shape="VM.Standard.E4.Flex", image_id=IMAGE, subnet_id=SUBNET,
                shape_config=oci.core.models.LaunchInstanceShapeConfigDetails(ocpus=4, memory_in_gbs=16),
                freeform_tags={"cluster": "bench"})
            try:
                instance = (await sdk(compute.launch_instance, details)).data
                while instance.lifecycle_state != "RUNNING":
                    await asyncio.sleep(args.poll_interval)
                    instance = (await sdk(compute.get_instance, instance.id)).data
                attachments = (await sdk(compute.list_vnic_attachments, COMPARTMENT, instance_id=instance.id)).data
                vnic = (await sdk(network.get_vnic, attachments[0].vnic_id)).data
                return bool(vnic.private_ip)
            except oci.exceptions.ServiceError:
                return False

        async def run() -> list[bool]:
            return await asyncio.gather(*(start_node(f"cn{i:04d}") for i in range(args.nodes)))

        start = time.monotonic()
        results = asyncio.run(run())
        wall = time.monotonic() - start
        pool.shutdown()
        return figures(emu, wall, sum(results), args)
    finally:
        emu.stop()


def figures(emu: OciEmulator, wall: float, up: int, args: argparse.Namespace) -> dict[str, Any]:
    accepted = emu.accepted_requests()
    total = sum(emu.received.values())
    return {
        "wall": wall, "up": up, "accepted": accepted, "total": total, "throttled": emu.rejected,
        "bound": accepted / args.rate, "per_node": total / args.nodes,
        "duplicates": sum(n - 1 for n in emu.instances_per_name().values() if n > 1),
        "by_operation": dict(emu.received),
    }


def report(name: str, f: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"{name}:")
    print(f"  nodes up          {f['up']} of {args.nodes} (duplicate instances: {f['duplicates']})")
    print(f"  wall time         {f['wall']:.1f} s")
    print(f"  requests          {f['total']} ({f['accepted']} accepted, {f['throttled']} throttled by the server)")
    print(f"  rate bound        {f['bound']:.1f} s  (accepted requests / {args.rate:g} per s)")
    print(f"  wall / bound      {f['wall'] / f['bound']:.2f}")
    print(f"  requests per node {f['per_node']:.2f}")
    print("  by operation      " + ", ".join(f"{k} {v}" for k, v in sorted(f["by_operation"].items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="server-side limit, requests/s")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to each answer")
    parser.add_argument("--provision-delay", type=float, default=2.0, help="PROVISIONING -> RUNNING, s")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--page-size", type=int, default=100, help="the emulator's largest page")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline-threads", type=int, default=64)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    print(f"{args.nodes} nodes; server limit {args.rate:g} requests/s; latency {args.latency * 1000:.0f} ms; "
          f"provisioning {args.provision_delay:g} s; poll every {args.poll_interval:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        config, _ = write_oci_config(tmp)
        ours = bench_ours(args, config)
        report("citc-power OciProvider", ours, args)
        ratio = ours["wall"] / ours["bound"]
        print(f"  goal wall/bound <= 1.15: {'met' if ratio <= 1.15 else 'MISSED'}; "
              f"goal requests/node <= 3: {'met' if ours['per_node'] <= 3 else 'MISSED'}")
        if not args.no_baseline:
            base = bench_baseline(args, config)
            report("baseline: a task per node, SDK default retries, GetInstance polling", base, args)
            speedup = base["wall"] / ours["wall"]
            print(f"speed-up over the baseline: {speedup:.1f}x (goal >= 3x: {'met' if speedup >= 3 else 'MISSED'})"
                  + ("" if base["up"] == args.nodes else f"; the baseline left {args.nodes - base['up']} nodes down"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

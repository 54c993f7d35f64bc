#!/usr/bin/env python3
"""Power on 64 ipmi_sim BMCs over IPMI (RMCP+, cipher suite 3) and verify: is it quick enough?

Prints the wall time of one batch against the goal (2 s), the per-call latency (median, p95)
and, as a baseline measured in the same run, the same batch one BMC at a time.

    python3 bench/ipmi_power.py [--nodes 64] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "providers"))
from ipmisim import IpmiSimFarm

from citc_power.providers.base import Node, PowerState
from citc_power.providers.ipmi import IpmiProvider

GOAL_SECONDS = 2.0


def make_provider(farm: IpmiSimFarm, root: Path, concurrency: int) -> IpmiProvider:
    password = root / "ipmi.pw"
    password.write_text(farm.password)
    password.chmod(0o600)
    return IpmiProvider.from_settings(
        "bench",
        {
            "type": "ipmi",
            "manifest": str(farm.manifest(root / "bmc.yaml", password)),
            "concurrency": concurrency,
            "timeout": 2,
        },
    )


def power_all_off(farm: IpmiSimFarm) -> None:
    for bmc in farm.bmcs.values():
        bmc.set_power(False)


async def batch(provider: IpmiProvider, nodes: list[Node]) -> float:
    """Wall time of one power_on batch; every node must end up on."""
    started = time.perf_counter()
    outcomes = await provider.power_on(nodes)
    wall = time.perf_counter() - started
    failed = [o for o in outcomes if not o.ok or o.message != "powered on"]
    if failed:
        raise SystemExit(f"power on failed: {failed[:3]}")
    states = await provider.power_state(nodes)
    if set(states.values()) != {PowerState.ON}:
        raise SystemExit(f"not all on after power on: {states}")
    return wall


async def one(provider: IpmiProvider, node: Node) -> float:
    """Latency of one node's power_on call."""
    started = time.perf_counter()
    (outcome,) = await provider.power_on([node])
    if not outcome.ok:
        raise SystemExit(f"{node.name}: {outcome}")
    return time.perf_counter() - started


async def all_at_once(provider: IpmiProvider, nodes: list[Node]) -> list[float]:
    """Each node's power_on as its own call, all calls at once."""
    return list(await asyncio.gather(*(one(provider, n) for n in nodes)))


async def one_by_one(provider: IpmiProvider, nodes: list[Node]) -> list[float]:
    """Each node's power_on as its own call, one after the other (the baseline)."""
    return [await one(provider, n) for n in nodes]


def figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipmi-bench-") as tmp:
        root = Path(tmp)
        farm = IpmiSimFarm(root / "bmcs")
        try:
            started = time.perf_counter()
            farm.start([f"bm{i:03d}" for i in range(args.nodes)])
            print(f"started {args.nodes} ipmi_sim BMCs in {time.perf_counter() - started:.2f}s")
            nodes = [Node(name) for name in farm.bmcs]
            wide = make_provider(farm, root, args.concurrency)

            async def run() -> tuple[float, list[float], list[float]]:
                wall = await batch(wide, nodes)
                power_all_off(farm)
                loaded = await all_at_once(wide, nodes)
                power_all_off(farm)
                serial = await one_by_one(wide, nodes)
                await wide.close()
                return wall, loaded, serial

            wall, loaded, serial = asyncio.run(run())
        finally:
            farm.stop()
    print(
        f"power on + verify, {args.nodes} BMCs in one batch, concurrency {args.concurrency}: "
        f"wall {wall:.3f}s (goal <= {GOAL_SECONDS:.1f}s: {wall / GOAL_SECONDS:.2f} of it)"
    )
    print(f"per-call latency, one BMC at a time: {figures(serial)}")
    print(f"per-call latency, all {args.nodes} calls at once: {figures(loaded)}")
    baseline = sum(serial)
    print(
        f"baseline, the {args.nodes} calls one after the other: {baseline:.3f}s "
        f"({baseline / wall:.1f}x the batch wall time)"
    )
    return 0 if wall <= GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())

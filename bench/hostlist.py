#!/usr/bin/env python3
"""How fast citc_power.hostlist.expand makes 100 000 names, next to ``scontrol show hostnames``.

Run: ``python3 bench/hostlist.py``. Each figure is the best of several runs, measured in this
same run on this machine, so the ratios hold even when the machine is busy:

- scontrol: ``scontrol show hostnames EXPR`` as a process (start and reading its output
  included); "as a list" adds splitting that output into names, which is what calling Slurm
  from Python would cost;
- ours, new process: ``python -c`` that imports the module, expands and prints the names
  (interpreter start included; the bare interpreter start is shown on its own line);
- ours, in process: ``expand(EXPR)`` in an already running program, which is how the suite's
  entry points use it.

Slurm 22.05 refuses a single range of more than 65536 names, so the one-group expression is
written as two ranges; ``n[000001-100000]`` is timed for ours alone.
"""
from __future__ import annotations

import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from citc_power.hostlist import collapse, expand

RUNS = 15
EXPRESSIONS = [
    ("one group, 100 000 names", "n[000001-050000,050001-100000]"),
    ("two groups, 50 x 2000", "rack[01-50]-n[0001-2000]"),
]
OURS_ONLY = [("one range of 100 000 (Slurm refuses)", "n[000001-100000]")]
PRINT_NAMES = (
    "import sys\nfrom citc_power.hostlist import expand\n"
    "sys.stdout.write('\\n'.join(expand(sys.argv[1])) + '\\n')\n"
)


def best_and_median(run: Callable[[], object], runs: int = RUNS) -> tuple[float, float]:
    """Seconds: the best and the median of ``runs`` timings of ``run()``."""
    times = timeit.repeat(run, number=1, repeat=runs)
    return min(times), statistics.median(times)


def process(argv: list[str], env: dict[str, str]) -> Callable[[], bytes]:
    def run() -> bytes:
        return subprocess.run(argv, env=env, capture_output=True, check=True).stdout

    return run


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def row(label: str, timing: tuple[float, float], baseline: float | None = None) -> None:
    best, median = timing
    ratio = f"   {best / baseline:5.2f} x scontrol" if baseline else ""
    print(f"  {label:<24} best {ms(best)}   median {ms(median)}{ratio}")


def bench_expression(title: str, expr: str, env: dict[str, str]) -> None:
    scontrol_out = process(["scontrol", "show", "hostnames", expr], env)()
    ours = expand(expr)
    if scontrol_out.decode().split("\n")[:-1] != ours:
        sys.exit(f"expand({expr!r}) differs from scontrol: the figures would mean nothing")
    print(f"{title}: {expr} -> {len(ours)} names")
    scontrol = best_and_median(process(["scontrol", "show", "hostnames", expr], env))
    row("scontrol (process)", scontrol)
    scontrol_argv = process(["scontrol", "show", "hostnames", expr], env)
    row("scontrol, as a list", best_and_median(lambda: scontrol_argv().decode().split()))
    row("ours, new process", best_and_median(process([sys.executable, "-c", PRINT_NAMES, expr], env)),
        scontrol[0])
    row("ours, in process", best_and_median(lambda: expand(expr)), scontrol[0])


def main() -> None:
    if shutil.which("scontrol") is None:
        sys.exit("scontrol not found: install slurm-wlm (make deps) to compare with Slurm")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "slurm.conf"  # scontrol reads one even to expand a hostlist
        conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=a State=UNKNOWN\n"
                        "PartitionName=p Nodes=a\n")
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "SLURM_CONF": str(conf),
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        print(f"hostlist expand, best and median of {RUNS} runs "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        row("python start alone", best_and_median(process([sys.executable, "-c", "pass"], env)))
        for title, expr in EXPRESSIONS:
            bench_expression(title, expr, env)
    for title, expr in OURS_ONLY:
        print(f"{title}: {expr}")
        row("ours, in process", best_and_median(functools.partial(expand, expr)))
    names = expand("n[000001-100000]")
    print("collapse of those 100 000 names (scontrol cannot take them: 128 kB argument limit)")
    if collapse(names) != "n[000001-100000]":
        sys.exit("collapse gave a wrong result")
    row("ours, in process", best_and_median(lambda: collapse(names), runs=5))


if __name__ == "__main__":
    main()

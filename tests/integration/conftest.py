"""Fixtures that start a real Slurm mini-cluster (see minicluster.py)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from minicluster import MiniCluster, SimNode, slurm_available  # noqa: E402

__all__ = ["MiniCluster", "SimNode"]


@pytest.fixture
def minicluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., MiniCluster]]:
    """Factory: ``minicluster(nodes=[SimNode(...)], power_config={...})`` -> started cluster.

    Every cluster is stopped after the test; its directory is kept only if the test failed
    and KEEP_MINICLUSTER is set.
    """
    reason = slurm_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"real-Slurm tests cannot run in CI: {reason}")
        pytest.skip(reason)
    clusters: list[MiniCluster] = []

    def make(nodes: list[SimNode], **kwargs: Any) -> MiniCluster:
        # a short path: munge's socket path must stay under 108 bytes
        root = Path(tempfile.mkdtemp(prefix="mini-", dir="/tmp"))
        cluster = MiniCluster(root, nodes, **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.stop()
        if not os.environ.get("KEEP_MINICLUSTER"):
            shutil.rmtree(cluster.root, ignore_errors=True)

"""finish: limits.yaml -> node lines of slurm.conf (golden files, bad-input corpus, safe writes).

Golden files: tests/data/finish/<case>.limits.yaml rendered into slurm.conf.in must give
<case>.expected.conf. After a deliberate change of the output, regenerate them with
``UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_finish.py`` and review the diff.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from citc_power import finish, hostlist, limits
from citc_power import slurm as slurm_mod
from citc_power.errors import SlurmError, UsageError
from citc_power.providers.base import Node

DATA = Path(__file__).parents[1] / "data" / "finish"
EXAMPLE = Path(__file__).parents[2] / "slurm_templates" / "limits.example.yaml"
GOLDEN = sorted(DATA.glob("*.limits.yaml")) + [EXAMPLE]
BAD = sorted((DATA / "bad").iterdir())
UPDATE = bool(os.environ.get("UPDATE_GOLDEN"))


class FakeSlurm:
    """Answers finish's questions as the real Slurm wrapper would, and records what it is asked."""

    def __init__(self, states: dict[str, str] | None = None, version: str | None = "slurm-wlm 22.05.8",
                 reachable: bool = True, reconfigure_fails: bool = False):
        self.states = states or {}
        self.version_text = version
        self.reachable = reachable
        self.reconfigure_fails = reconfigure_fails
        self.asked: list[list[str]] = []
        self.reconfigured = 0

    def version(self):
        return slurm_mod.parse_version(self.version_text) if self.version_text else None

    def read_nodes(self, names):
        self.asked.append(list(names))
        if not self.reachable:
            raise SlurmError("scontrol show node -o failed: Unable to contact slurm controller")
        return {n: Node(name=n, state=s) for n, s in self.states.items() if n in names}

    def reconfigure(self) -> None:
        if self.reconfigure_fails:
            raise SlurmError("scontrol reconfigure failed: Unable to contact slurm controller")
        self.reconfigured += 1


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(finish.command, [str(a) for a in args], env=env)


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def write_conf(path: Path, block: str = "") -> Path:
    path.write_text(f"ClusterName=t\n# STARTNODES\n{block}# ENDNODES\nPartitionName=x Nodes=ALL\n")
    return path


def write_limits(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def opts(tmp_path: Path, limits_text: str, block: str = "", **kw) -> finish.Options:
    return finish.Options(write_limits(tmp_path / "limits.yaml", limits_text),
                          write_conf(tmp_path / "slurm.conf", block), **kw)


# -- golden files ---------------------------------------------------------------------------------

def case_name(path: Path) -> str:
    return "example" if path == EXAMPLE else path.name.split(".")[0]


@pytest.mark.parametrize("case", GOLDEN, ids=case_name)
def test_golden_limits_render_to_the_expected_slurm_conf(case: Path, tmp_path: Path):
    conf = tmp_path / "slurm.conf"
    shutil.copy(DATA / "slurm.conf.in", conf)
    result = invoke(case, "--slurm-conf", conf, "--no-reconfigure")
    assert result.exit_code == 0, result.output
    expected = DATA / f"{case_name(case)}.expected.conf"
    if UPDATE:
        shutil.copy(conf, expected)
    assert conf.read_text() == expected.read_text()


def test_golden_output_keeps_everything_outside_the_markers():
    template = (DATA / "slurm.conf.in").read_text()
    head, _, tail = template.partition("# (no nodes yet)\n")
    for expected in DATA.glob("*.expected.conf"):
        text = expected.read_text()
        assert text.startswith(head) and text.endswith(tail), expected.name


def test_a_thousand_nodes_take_a_handful_of_lines():
    text = (DATA / "thousand.expected.conf").read_text()
    node_lines = [line for line in text.splitlines() if line.startswith("NodeName=")]
    names = [n for line in node_lines for n in hostlist.expand(line.split()[0].split("=", 1)[1])]
    assert len(names) == 1000 and len(set(names)) == 1000
    assert len(node_lines) == 3


def test_long_hostlists_are_split_over_lines_that_keep_every_node():
    names = [f"bm{n:04d}" for n in range(1, 3000, 2)]  # nothing collapses into a range
    chunks = limits.hostlist_chunks(names)
    assert len(chunks) > 1
    assert all(len(c) <= limits.MAX_HOSTLIST for c in chunks)
    assert [n for c in chunks for n in hostlist.expand(c)] == names


def test_real_memory_keeps_the_larger_of_five_percent_and_one_gib_back():
    reserve = limits.Reserve()
    assert reserve.real_memory(15 * 1024) == 15 * 1024 - 1024  # 5 % = 768 MiB < 1 GiB
    assert reserve.real_memory(128 * 1024) == 128 * 1024 - 6554  # 5 % rounded up
    assert limits.Reserve(percent=0, minimum=0).real_memory(1000) == 1000


def test_flex_shapes_take_cpus_and_memory_from_their_name(tmp_path: Path):
    plan = limits.read_limits(write_limits(tmp_path / "l.yaml", "VM.Standard.A1.Flex.8.48: 1\n"
                                           "VM.Standard.E4.Flex.4.16: 1\n"), limits.load_catalog())
    arm, amd = plan.groups
    assert (arm.facts.cpus, arm.facts.threads_per_core, arm.facts.memory, arm.facts.arch) == (8, 1, 48 * 1024, "aarch64")
    assert (amd.facts.cpus, amd.facts.cores_per_socket, amd.facts.memory) == (8, 4, 16 * 1024)
    assert amd.names == ("vm-standard-e4-flex-4-16-0001",)


# -- bad input ------------------------------------------------------------------------------------

def _header(path: Path) -> tuple[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# expect: ") and lines[1].startswith("# line: "), path
    return lines[0][len("# expect: "):], lines[1][len("# line: "):]


@pytest.mark.parametrize("bad", BAD, ids=lambda p: p.name)
def test_bad_input_is_refused_with_one_line_naming_file_line_and_fix(bad: Path, tmp_path: Path):
    expect, line = _header(bad)
    work = tmp_path / "etc"
    work.mkdir()
    conf = work / "slurm.conf"
    shutil.copy(DATA / "slurm.conf.in", conf)
    limits_file = work / "limits.yaml"
    shutil.copy(DATA / "citc_counts.limits.yaml", limits_file)
    args = ["--slurm-conf", conf, "--no-reconfigure"]
    culprit = work / bad.name
    if bad.suffix == ".conf":
        culprit = conf
        shutil.copy(bad, conf)
    elif bad.name.startswith("shapes-"):
        shutil.copy(bad, culprit)
        args += ["--shapes", culprit]
    else:
        shutil.copy(bad, culprit)
        limits_file = culprit
    before = snapshot(work)

    result = invoke(limits_file, *args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(text.startswith("finish: ") for text in lines), lines
    parts = expect.split(" … ")  # all parts must be in one line
    matching = [text for text in lines if all(part in text for part in parts)]
    assert matching, f"{expect!r} not in {lines}"
    where = str(culprit) if line == "none" else f"{culprit}:{line}:"
    assert any(where in text for text in matching), f"{where!r} not in {matching}"
    assert snapshot(work) == before  # nothing written, no backup left behind


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path):
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Nope.1: 2\nVM.Standard2.1: -3\n"
                               "groups:\n  - {nodes: 'bm[1-2]', cpus: 2, memory: 4G, colour: red}\n")
    result = invoke(limits_file, "--slurm-conf", write_conf(tmp_path / "slurm.conf"))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert [text.split(":")[2] for text in lines] == ["1", "2", "4"], lines


def test_a_missing_limits_file_is_one_line_naming_it(tmp_path: Path):
    result = invoke(tmp_path / "nope.yaml", "--slurm-conf", write_conf(tmp_path / "slurm.conf"))
    assert result.exit_code == 2
    assert result.stderr == f"finish: {tmp_path / 'nope.yaml'}: no such file; create it or name another file\n"


def test_finish_console_script_exits_2_without_traceback(tmp_path: Path):
    script = Path(sys.executable).parent / "finish"
    if not script.exists():
        pytest.skip("the finish console script is not installed (pip install -e .)")
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: -1\n")
    proc = subprocess.run([str(script), str(limits_file), "--slurm-conf", str(write_conf(tmp_path / "slurm.conf"))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"finish: {limits_file}:1: VM.Standard2.1: count -1 is negative")
    assert "Traceback" not in proc.stderr


# -- writing ----------------------------------------------------------------------------------------

def test_dry_run_prints_a_unified_diff_and_changes_nothing(tmp_path: Path):
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 2\n")
    conf = write_conf(tmp_path / "slurm.conf")
    before = snapshot(tmp_path)
    result = invoke(limits_file, "--slurm-conf", conf, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"--- {conf}\n+++ {conf}\n@@ ")
    assert "+NodeName=vm-standard2-1-[0001-0002] State=CLOUD CPUs=2" in result.stdout
    assert "would change: 2 nodes in 1 groups, 2 added" in result.stdout
    assert snapshot(tmp_path) == before


def test_write_keeps_mode_and_owner_and_backs_up_the_old_file(tmp_path: Path):
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 2\n")
    conf = write_conf(tmp_path / "slurm.conf")
    original = conf.read_bytes()
    os.chmod(conf, 0o640)
    if os.geteuid() == 0:
        os.chown(conf, 4321, 4322)
    result = invoke(limits_file, "--slurm-conf", conf)
    assert result.exit_code == 0, result.output
    st = conf.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    backups = list(tmp_path.glob("slurm.conf.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
        assert (backups[0].stat().st_uid, backups[0].stat().st_gid) == (4321, 4322)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".slurm.conf.")]  # no temp file left


def test_bytes_outside_the_markers_are_kept_exactly(tmp_path: Path):
    head = b"ClusterName=t\r\n# caf\xe9 in latin-1\r\n# STARTNODES\r\n"
    tail = b"# ENDNODES\r\nPartitionName=x Nodes=ALL"  # CRLF and no newline at the end
    conf = tmp_path / "slurm.conf"
    conf.write_bytes(head + b"NodeName=old1 CPUs=1\r\n" + tail)
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 1\n")
    result = finish.run(finish.Options(limits_file, conf, reconfigure=False), FakeSlurm({}), echo=lambda _: None)
    assert result == 0
    data = conf.read_bytes()
    assert data.startswith(head) and data.endswith(tail)
    assert b"NodeName=vm-standard2-1-0001 State=CLOUD" in data and b"old1" not in data


def test_a_symlinked_slurm_conf_stays_a_link_to_the_updated_file(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = write_conf(shared / "slurm.conf")
    link = tmp_path / "slurm.conf"
    link.symlink_to(target)
    result = invoke(write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 1\n"), "--slurm-conf", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "vm-standard2-1-0001" in target.read_text()
    assert len(list(shared.glob("slurm.conf.*.bak"))) == 1


def test_a_second_run_with_the_same_limits_changes_nothing(tmp_path: Path):
    limits_file = write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 2\n")
    conf = write_conf(tmp_path / "slurm.conf")
    assert invoke(limits_file, "--slurm-conf", conf).exit_code == 0
    before = snapshot(tmp_path)
    result = invoke(limits_file, "--slurm-conf", conf)
    assert result.exit_code == 0
    assert "nothing to do" in result.stdout
    assert snapshot(tmp_path) == before


def test_slurm_conf_comes_from_the_SLURM_CONF_environment(tmp_path: Path):
    conf = write_conf(tmp_path / "other.conf")
    result = invoke(write_limits(tmp_path / "limits.yaml", "m1.small: 1\n"), env={"SLURM_CONF": str(conf)})
    assert result.exit_code == 0, result.output
    assert "NodeName=m1-small-0001" in conf.read_text()


def test_a_site_shapes_file_adds_shapes_and_replaces_packaged_ones(tmp_path: Path):
    site = tmp_path / "site-shapes.yaml"
    site.write_text("VM.Standard2.1: {cpus: 4, memory: 32G}\nlab.big: {sockets: 2, cores_per_socket: 8,"
                    " memory: 64G, gres: 'gpu:1', arch: aarch64}\n")
    catalog = limits.load_catalog([site])
    assert catalog.resolve("VM.Standard2.1") == limits.Facts(1, 4, 1, 32 * 1024)
    assert catalog.resolve("lab.big") == limits.Facts(2, 8, 1, 64 * 1024, "gpu:1", "aarch64")
    assert catalog.resolve("VM.Standard2.2").cpus == 4  # the others stay


# -- asking Slurm ---------------------------------------------------------------------------------

OLD_BLOCK = "NodeName=vm-standard2-1-[0001-0003] State=CLOUD CPUs=2\n"


def test_nodes_slurm_has_powered_up_are_not_removed_without_force(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 1\n", OLD_BLOCK)
    before = snapshot(tmp_path)
    slurm = FakeSlurm({"vm-standard2-1-0002": "ALLOCATED+CLOUD", "vm-standard2-1-0003": "IDLE+CLOUD+POWERED_DOWN"})
    with pytest.raises(UsageError, match=r"^vm-standard2-1-0002 would be removed while powered up; "
                                          r"power them down first \(stopnode\) or use --force$"):
        finish.run(o, slurm, echo=lambda _: None)
    assert slurm.asked == [["vm-standard2-1-0002", "vm-standard2-1-0003"]]
    assert snapshot(tmp_path) == before


def test_force_removes_powered_up_nodes_and_warns(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 1\n", OLD_BLOCK, force=True)
    out: list[str] = []
    finish.run(o, FakeSlurm({"vm-standard2-1-0002": "IDLE+CLOUD+POWERING_DOWN"}), echo=out.append)
    assert "vm-standard2-1-0002" not in o.slurm_conf.read_text()
    assert any(line.startswith("warning: vm-standard2-1-0002 removed while powered up") for line in out)


def test_powered_down_and_unlisted_nodes_are_removed(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 1\n", OLD_BLOCK)
    out: list[str] = []
    assert finish.run(o, FakeSlurm({"vm-standard2-1-0002": "DOWN+CLOUD+POWERED_DOWN"}), echo=out.append) == 0
    assert "changed: 1 nodes in 1 groups, 2 removed (vm-standard2-1-[0002-0003])" in out


def test_removal_is_refused_when_slurm_cannot_be_asked(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 1\n", OLD_BLOCK)
    with pytest.raises(UsageError, match="cannot ask Slurm whether vm-standard2-1-\\[0002-0003\\] are powered down"
                                         ".*; start slurmctld or use --force$"):
        finish.run(o, FakeSlurm(reachable=False), echo=lambda _: None)
    assert "vm-standard2-1-[0001-0003]" in o.slurm_conf.read_text()


def test_dry_run_reports_nodes_it_would_refuse_to_remove(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 1\n", OLD_BLOCK, dry_run=True)
    out: list[str] = []
    assert finish.run(o, FakeSlurm({"vm-standard2-1-0003": "MIXED+CLOUD"}), echo=out.append) == 0
    assert out[-1] == "finish: would refuse: vm-standard2-1-0003 would be removed while powered up"
    assert "vm-standard2-1-[0001-0003]" in o.slurm_conf.read_text()


def test_new_nodes_on_slurm_22_05_ask_for_a_restart_instead_of_reconfiguring(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 4\n", OLD_BLOCK)
    slurm = FakeSlurm(version="slurm-wlm 22.05.8")
    out: list[str] = []
    assert finish.run(o, slurm, echo=out.append) == 0
    assert slurm.reconfigured == 0
    assert out[-1].startswith("restart slurmctld now: Slurm 22.05 reads its node list only when it starts")


def test_new_nodes_on_slurm_23_11_are_applied_by_reconfigure(tmp_path: Path):
    slurm = FakeSlurm(version="slurm 23.11.4")
    assert finish.run(opts(tmp_path, "VM.Standard2.1: 4\n", OLD_BLOCK), slurm, echo=lambda _: None) == 0
    assert slurm.reconfigured == 1


def test_changed_node_facts_alone_are_applied_by_reconfigure(tmp_path: Path):
    slurm = FakeSlurm(version="slurm-wlm 22.05.8")
    out: list[str] = []
    assert finish.run(opts(tmp_path, "VM.Standard2.1: 3\n", OLD_BLOCK), slurm, echo=out.append) == 0
    assert slurm.reconfigured == 1 and out[-1] == "ran scontrol reconfigure"


def test_an_unknown_slurm_version_asks_for_a_restart_when_nodes_change(tmp_path: Path):
    slurm = FakeSlurm(version=None)
    out: list[str] = []
    finish.run(opts(tmp_path, "VM.Standard2.1: 4\n", OLD_BLOCK), slurm, echo=out.append)
    assert slurm.reconfigured == 0 and out[-1].startswith("restart slurmctld now: this Slurm")


def test_no_reconfigure_leaves_slurm_alone(tmp_path: Path):
    slurm = FakeSlurm()
    out: list[str] = []
    finish.run(opts(tmp_path, "VM.Standard2.1: 3\n", OLD_BLOCK, reconfigure=False), slurm, echo=out.append)
    assert slurm.reconfigured == 0 and out[-1].startswith("left Slurm alone (--no-reconfigure)")


def test_a_failed_reconfigure_is_an_error_after_the_file_is_written(tmp_path: Path):
    o = opts(tmp_path, "VM.Standard2.1: 3\n", OLD_BLOCK)
    with pytest.raises(SlurmError, match="but scontrol reconfigure failed") as info:
        finish.run(o, FakeSlurm(reconfigure_fails=True), echo=lambda _: None)
    assert info.value.exit_code == 1
    assert "RealMemory=14336" in o.slurm_conf.read_text()


def test_node_lines_outside_the_markers_that_cannot_be_read_are_left_alone(tmp_path: Path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("NodeName=odd[1-2]x CPUs=1\n# STARTNODES\n# ENDNODES\n")
    result = invoke(write_limits(tmp_path / "limits.yaml", "VM.Standard2.1: 1\n"), "--slurm-conf", conf)
    assert result.exit_code == 0, result.output
    assert conf.read_text().startswith("NodeName=odd[1-2]x CPUs=1\n# STARTNODES\n# Written by finish")

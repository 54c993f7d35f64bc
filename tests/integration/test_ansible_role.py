"""The ansible role: lint-clean, and applied for real to localhost under a temporary prefix.

The role installs this checkout (as a wheel, offline) into a venv, writes the config, a secret,
the power-saving include, the wrappers and the nodes (through finish), and tells slurmctld
through a handler. A stand-in for scontrol/systemctl records what the handlers ran.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from minicluster import MiniCluster, SimNode, slurm_available

REPO = Path(__file__).parents[2]
ANSIBLE = REPO / "ansible"
SECRET = "s3cret-value-never-logged"


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed")
    return found


def _owner(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def _slurm_user() -> str:
    """SlurmUser of the test: the slurm account Debian's slurm-wlm creates, when we may chown to it."""
    try:
        pwd.getpwnam("slurm")
        grp.getgrnam("slurm")
    except KeyError:
        return pwd.getpwuid(os.geteuid()).pw_name
    return "slurm" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


class Applied:
    """One prefix the role was applied to, and how to apply it again."""

    def __init__(self, root: Path):
        self.root = root
        self.prefix = root / "prefix"
        self.calls = root / "calls"
        self.user = _slurm_user()
        self.owner = pwd.getpwuid(os.geteuid()).pw_name
        self.owner_group = grp.getgrgid(os.getegid()).gr_name
        self.venv = self.prefix / "opt/citc-power"
        self.bin = self.venv / "libexec"
        self.config = self.prefix / "etc/citc/power.yaml"
        self.secrets = self.prefix / "etc/citc/secrets"
        self.include = self.prefix / "etc/slurm/citc-power.conf"
        self.slurm_conf = self.prefix / "etc/slurm/slurm.conf"
        self.logs = self.prefix / "var/log/slurm"

    def vars(self, wheels: Path, **overrides: Any) -> dict[str, Any]:
        recorder = self.root / "record"
        values: dict[str, Any] = {
            "citc_power_prefix": str(self.prefix),
            "citc_power_source": "citc-power",
            "citc_power_python": sys.executable,
            "citc_power_venv_site_packages": True,
            "citc_power_pip_extra_args": f"--no-index --no-deps --find-links {wheels}",
            "citc_power_slurm_user": self.user,
            "citc_power_slurm_group": self.user,
            "citc_power_owner": self.owner,
            "citc_power_owner_group": self.owner_group,
            "citc_power_secrets": {"bmc-password": SECRET},
            "citc_power_groups": [
                {"nodes": "vm-standard2-1-[0001-0002]", "provider": "site"},
                {"nodes": "bm[1-2]", "provider": "bmc"},
            ],
            "citc_power_providers": {
                "site": {"type": "command", "on": "/bin/true {node}", "off": "/bin/true {node}"},
                "bmc": {"type": "ipmi", "address": "{node}-ipmi", "username": "admin",
                        "password_file": f"{self.secrets}/bmc-password"},
            },
            "citc_power_limits": {
                "VM.Standard2.1": 2,
                "groups": [{"nodes": "bm[1-2]", "cpus": 4, "memory": "8G", "state": "static"}],
            },
            "citc_power_scontrol": str(recorder),
            "citc_power_restart_command": [str(recorder), "restart"],
        }
        values.update(overrides)
        return values

    def apply(self, wheels: Path, **overrides: Any) -> subprocess.CompletedProcess[str]:
        playbook = self.root / "play.yml"
        extra = self.root / "vars.yml"
        playbook.write_text(yaml.safe_dump([{"name": "Apply citc_power", "hosts": "all",
                                              "gather_facts": False, "roles": ["citc_power"]}]))
        extra.write_text(yaml.safe_dump(self.vars(wheels, **overrides)))
        env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1", ANSIBLE_LOCAL_TEMP=str(self.root / "tmp"),
                   ANSIBLE_HOME=str(self.root / "ansible-home"), PIP_NO_INDEX="1")
        return subprocess.run(
            [_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
             f"ansible_python_interpreter={sys.executable}", "-e", f"@{extra}", str(playbook)],
            capture_output=True, text=True, env=env, timeout=300, check=False)


def _build_wheel(root: Path) -> Path:
    """A wheel of this checkout, built offline from a copy (the checkout is left untouched)."""
    src = root / "src"
    shutil.copytree(REPO / "citc_power", src / "citc_power", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("citc-power\n")
    wheels = root / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                           "--no-build-isolation", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=300, check=False)
    # setuptools older than 70.1 builds wheels only with the wheel package installed
    assert proc.returncode == 0, f"cannot build a wheel offline (is the wheel package installed?):\n{proc.stderr[-2000:]}"
    return wheels


def _prepare_venv(venv: Path) -> None:
    """The venv the role installs into, able to import what this test run can (offline).

    With --system-site-packages it sees the base interpreter's packages; when the tests run in
    a venv themselves (make test), a .pth file adds that venv's packages too. The role then
    installs citc-power into it with --no-deps.
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    purelib = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "test-runner.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))


def _recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Applied, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("role")
    wheels = _build_wheel(root)
    run = Applied(root)
    (root / "record").write_text(f"#!/bin/sh\necho \"$*\" >> {run.calls}\n")
    (root / "record").chmod(0o755)
    _prepare_venv(run.venv)
    run.slurm_conf.parent.mkdir(parents=True)
    run.slurm_conf.write_text("ClusterName=ci\nSlurmUser=slurm\n")
    result = run.apply(wheels)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return run, wheels, result


def test_the_role_and_example_playbook_are_ansible_lint_clean():
    proc = subprocess.run([_tool("ansible-lint"), "--offline", "-q"], cwd=ANSIBLE, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_role_installs_citc_power_into_a_venv_of_its_own(applied):
    run, _, _ = applied
    proc = subprocess.run([str(run.venv / "bin/citc-power"), "--version"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "0.1.0" in proc.stdout
    assert (run.venv / "bin/finish").exists()


def test_config_is_private_to_the_slurm_user_and_holds_no_secret(applied):
    run, _, _ = applied
    assert _owner(run.config) == (run.user, run.user, 0o600)
    text = run.config.read_text()
    assert SECRET not in text
    config = yaml.safe_load(text)
    assert config["log"] == {"file": f"{run.logs}/citc-power.log", "level": "info"}
    assert config["groups"][1] == {"nodes": "bm[1-2]", "provider": "bmc"}
    assert config["providers"]["bmc"]["password_file"] == f"{run.secrets}/bmc-password"


def test_secrets_are_separate_files_only_the_slurm_user_can_read(applied):
    run, _, result = applied
    secret = run.secrets / "bmc-password"
    assert secret.read_text() == SECRET
    assert _owner(secret) == (run.user, run.user, 0o600)
    assert _owner(run.secrets) == (run.user, run.user, 0o700)
    assert SECRET not in result.stdout + result.stderr


def test_log_directory_belongs_to_the_slurm_user(applied):
    run, _, _ = applied
    assert _owner(run.logs) == (run.user, run.user, 0o750)


def test_wrappers_are_absolute_executables_not_writable_by_others(applied):
    run, _, _ = applied
    for action in ("resume", "suspend", "resume-fail", "reboot"):
        wrapper = run.bin / f"citc-power-{action}"
        assert _owner(wrapper) == (run.owner, run.owner_group, 0o755)
        text = wrapper.read_text()
        assert f"PATH={run.venv}/bin:" in text and f"CITC_POWER_CONFIG={run.config}\n" in text
        assert f'exec env --default-signal {run.venv}/bin/citc-power {action} "$@"' in text


def test_include_names_the_wrappers_and_the_22_05_settings(applied):
    run, _, _ = applied
    assert _owner(run.include)[2] == 0o644
    lines = [line for line in run.include.read_text().splitlines() if line and not line.startswith("#")]
    settings = dict(line.split("=", 1) for line in lines)
    assert settings["ResumeProgram"] == f"{run.bin}/citc-power-resume"
    assert settings["SuspendProgram"] == f"{run.bin}/citc-power-suspend"
    assert settings["ResumeFailProgram"] == f"{run.bin}/citc-power-resume-fail"
    assert settings["RebootProgram"] == f"{run.bin}/citc-power-reboot"
    assert settings["PrivateData"] == "cloud" and settings["CommunicationParameters"] == "NoAddrCache"
    assert settings["SlurmctldParameters"] == "idle_on_node_suspend,cloud_reg_addrs"
    assert settings["SuspendTime"] == "300" and settings["TreeWidth"] == "65533"


def test_slurm_conf_gets_the_include_the_markers_and_the_nodes(applied):
    run, _, _ = applied
    text = run.slurm_conf.read_text()
    assert text.startswith("ClusterName=ci\nSlurmUser=slurm\n")
    assert f"Include {run.include}\n# STARTNODES\n" in text
    assert "NodeName=vm-standard2-1-[0001-0002] State=CLOUD CPUs=2" in text
    assert "NodeName=bm[1-2] CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=7168\n" in text
    assert text.endswith("# ENDNODES\n")


def test_new_power_saving_restarts_slurmctld_through_the_handler(applied):
    run, _, _ = applied
    # power saving switched on and nodes added (Slurm 22.05 here): a restart, not a reconfigure
    assert run.calls.read_text().splitlines() == ["restart"]


def test_applying_again_changes_nothing_and_tells_slurm_nothing(applied):
    run, wheels, _ = applied
    calls = run.calls.read_text()
    result = run.apply(wheels)
    assert result.returncode == 0, result.stdout[-3000:]
    assert _recap(result.stdout)["changed"] == 0, result.stdout[-3000:]
    assert run.calls.read_text() == calls


def test_a_changed_setting_reconfigures_slurmctld(applied):
    run, wheels, _ = applied
    before = run.calls.read_text()
    result = run.apply(wheels, citc_power_suspend_time=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "SuspendTime=600\n" in run.include.read_text()
    assert run.calls.read_text() == before + "reconfigure\n"


def test_role_refuses_a_slurm_conf_that_sets_power_saving_keys_itself(applied, tmp_path: Path):
    _, wheels, _ = applied
    run = Applied(tmp_path)
    run.slurm_conf.parent.mkdir(parents=True)
    run.slurm_conf.write_text("ClusterName=ci\nDebugFlags=Backfill\n  suspendtime = 60\n#SuspendRate=5\n")
    result = run.apply(wheels)
    assert result.returncode != 0
    assert (f"{run.slurm_conf} sets DebugFlags, suspendtime, which {run.include} sets (Slurm would use"
            " whichever comes last)") in result.stdout
    assert not run.venv.exists()  # refused before anything was installed

# -- the rendered files driving a real slurmctld --------------------------------------------------

# what the role's include sets; the harness's own values of these keys are left out
INCLUDE_KEYS = ("ResumeProgram", "SuspendProgram", "ResumeFailProgram", "RebootProgram", "SuspendTime",
                "SuspendTimeout", "ResumeTimeout", "ResumeRate", "SuspendRate", "SlurmctldParameters",
                "ReturnToService", "PrivateData", "DebugFlags", "TreeWidth", "CommunicationParameters")


class RoleCluster(MiniCluster):
    """A mini-cluster whose power saving and nodes come from the role (include, wrappers, finish)."""

    def __init__(self, root: Path, applied: Applied, wheels: Path):
        super().__init__(root, [SimNode("cn1"), SimNode("cn2")])
        self.applied = applied
        self.wheels = wheels

    def render_slurm_conf(self) -> str:
        keep = [line for line in super().render_slurm_conf().splitlines()
                if line.split("=", 1)[0] not in INCLUDE_KEYS and not line.startswith(("NodeName=", "PartitionName="))]
        return "\n".join(keep) + "\n"

    def limits(self, names: tuple[str, ...] = ("cn1", "cn2")) -> dict[str, Any]:
        # one group per node: each slurmd of the mini-cluster listens on its own port
        return {"groups": [{"nodes": n.name, "cpus": n.cpus, "real_memory": n.real_memory,
                            "features": {"rack": f"r{i}"}, "options": {"Port": n.port}}
                           for i, n in enumerate(self.nodes, 1) if n.name in names]}

    def _write_files(self) -> None:
        super()._write_files()
        result = self.applied.apply(
            self.wheels, citc_power_slurm_conf=str(self.slurm_conf),
            citc_power_slurm_include=str(self.root / "citc-power.conf"),
            citc_power_slurm_user="root", citc_power_slurm_group="root",
            citc_power_groups=[{"nodes": "cn[1-2]", "provider": "local"}],
            citc_power_providers=self.default_power_config()["providers"],
            citc_power_limits=self.limits(), citc_power_log_level="debug",
            citc_power_suspend_time=10, citc_power_suspend_timeout=5, citc_power_resume_timeout=60)
        assert result.returncode == 0, result.stdout[-4000:]


@pytest.fixture(scope="module")
def role_cluster(applied) -> Any:
    """One cluster for the tests below (applying the role and starting Slurm take a while)."""
    reason = slurm_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"real-Slurm tests cannot run in CI: {reason}")
        pytest.skip(reason)
    run, wheels, _ = applied
    root = Path(tempfile.mkdtemp(prefix="mini-", dir="/tmp"))  # munge's socket path must stay short
    cluster = RoleCluster(root, run, wheels)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slurm
def test_rendered_files_power_nodes_of_a_real_slurmctld_up_and_down(role_cluster: RoleCluster):
    cluster = role_cluster
    run = cluster.applied
    assert f"Include {cluster.root}/citc-power.conf" in cluster.slurm_conf.read_text()
    for i, name in enumerate(("cn1", "cn2"), 1):
        node = cluster.node(name)
        assert node["AvailableFeatures"] == f"rack=r{i}"
        assert {"CLOUD", "POWERED_DOWN"} <= set(node["State"].split("+"))

    # srun rather than sbatch: a batch job starts up to 30 s after its nodes are up
    srun = cluster.run(shutil.which("srun") or "srun", "-N2", "-w", "cn[1-2]", "hostname", timeout=120, check=False)
    assert srun.returncode == 0, srun.stderr
    for name in ("cn1", "cn2"):
        cluster.wait_node_state(name, r"idle~", 60)
        assert not cluster.slurmd_running(name)
    log = (run.logs / "citc-power.log").read_text()
    assert re.search(r"resume\] .*resume cn1: done", log), log[-2000:]
    assert re.search(r"suspend cn\[1-2\]|suspend cn1", log), log[-2000:]


@pytest.mark.slurm
def test_finish_refuses_to_remove_a_node_a_real_slurmctld_has_powered_up(role_cluster: RoleCluster):
    cluster = role_cluster
    cluster.scontrol("update", "nodename=cn2", "state=power_up")
    cluster.wait_node_state("cn2", r"idle", 60)
    limits_file = cluster.root / "fewer.yaml"
    limits_file.write_text(yaml.safe_dump(cluster.limits(("cn1",))))
    before = cluster.slurm_conf.read_bytes()
    proc = cluster.run(str(cluster.applied.venv / "bin/finish"), str(limits_file), "--slurm-conf",
                       str(cluster.slurm_conf), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == ("finish: cn2 would be removed while powered up; power them down first (stopnode)"
                           " or use --force\n")
    assert cluster.slurm_conf.read_bytes() == before

"""slurm_templates/: the power-saving include per Slurm release, and the program wrappers.

Rendered with plain Jinja2 the way ansible's template module does (trim_blocks), and the
wrapper is run the way slurmctld runs its programs: no environment but SLURM_CONF, file
descriptors 0-2 closed and every signal blocked.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")

TEMPLATES = Path(__file__).parents[2] / "slurm_templates"
ROLE_DEFAULTS = Path(__file__).parents[2] / "ansible/roles/citc_power/defaults/main.yml"


def render(name: str, **values: object) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    base: dict[str, object] = {
        "citc_power_slurm_version": "22.05", "citc_power_slurm_include": "/etc/slurm/citc-power.conf",
        "citc_power_bin_dir": "/opt/citc-power/libexec", "citc_power_reboot_program": True,
        "citc_power_suspend_time": 300, "citc_power_suspend_timeout": 120, "citc_power_resume_timeout": 900,
        "citc_power_resume_rate": 0, "citc_power_suspend_rate": 0, "citc_power_suspend_exc_nodes": "",
        "citc_power_suspend_exc_parts": "", "citc_power_suspend_exc_states": "",
        "citc_power_slurmctld_parameters": ["idle_on_node_suspend", "cloud_reg_addrs"],
        "citc_power_tree_width": 65533, "citc_power_return_to_service": 2,
        "citc_power_debug_flags": ["Power"], "citc_power_private_data": [],
        "citc_power_communication_parameters": [],
    }
    base.update(values)
    return env.get_template(name).render(**base)


def settings(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)), f"a key is set twice: {keys}"
    return dict(line.split("=", 1) for line in lines)


def test_include_for_22_05_shows_cloud_nodes_and_does_not_cache_addresses():
    conf = settings(render("citc-power.conf.j2"))
    assert conf["PrivateData"] == "cloud"
    assert conf["CommunicationParameters"] == "NoAddrCache"
    assert "SuspendExcStates" not in conf
    assert conf["ResumeProgram"] == "/opt/citc-power/libexec/citc-power-resume"
    assert conf["ResumeFailProgram"] == "/opt/citc-power/libexec/citc-power-resume-fail"
    assert conf["DebugFlags"] == "Power" and conf["ReturnToService"] == "2"


def test_include_for_23_11_drops_the_keys_slurm_removed_or_made_default():
    conf = settings(render("citc-power.conf.j2", citc_power_slurm_version="23.11",
                           citc_power_suspend_exc_states="down,drain"))
    assert "CommunicationParameters" not in conf  # NoAddrCache is refused from 23.11
    assert "PrivateData" not in conf  # cloud nodes are shown by default from 23.02
    assert conf["SuspendExcStates"] == "down,drain"
    assert conf["SlurmctldParameters"] == "idle_on_node_suspend,cloud_reg_addrs"


def test_site_values_of_the_keys_the_include_owns_are_merged_in():
    conf = settings(render("citc-power.conf.j2", citc_power_debug_flags=["Power", "Backfill"],
                           citc_power_private_data=["jobs"], citc_power_communication_parameters=["block_null_hash"]))
    assert conf["DebugFlags"] == "Power,Backfill"
    assert conf["PrivateData"] == "cloud,jobs"
    assert conf["CommunicationParameters"] == "NoAddrCache,block_null_hash"
    newer = settings(render("citc-power.conf.j2", citc_power_slurm_version="23.11", citc_power_private_data=["jobs"]))
    assert newer["PrivateData"] == "jobs" and "CommunicationParameters" not in newer


def test_include_leaves_out_what_a_site_does_not_use():
    conf = settings(render("citc-power.conf.j2", citc_power_reboot_program=False,
                           citc_power_suspend_exc_nodes="login[1-2]", citc_power_slurm_version="24.05"))
    assert "RebootProgram" not in conf and "SuspendExcParts" not in conf
    assert conf["SuspendExcNodes"] == "login[1-2]"


def test_role_knows_every_key_the_include_sets():
    import yaml

    owned = set(yaml.safe_load((ROLE_DEFAULTS.parent.parent / "vars/main.yml").read_text())["citc_power_include_keys"])
    conf = settings(render("citc-power.conf.j2", citc_power_suspend_exc_nodes="a", citc_power_suspend_exc_parts="b",
                           citc_power_suspend_exc_states="down", citc_power_slurm_version="23.02",
                           citc_power_private_data=["jobs"], citc_power_communication_parameters=["x"]))
    assert set(conf) <= owned, set(conf) - owned


def test_role_defaults_cover_every_template_variable():
    import jinja2.meta
    import yaml

    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    env = jinja2.Environment()
    for name in ("citc-power.conf.j2", "bin/citc-power-program.j2"):
        used = jinja2.meta.find_undeclared_variables(env.parse((TEMPLATES / name).read_text()))
        missing = {v for v in used if v.startswith("citc_power_")} - set(defaults)
        assert not missing, f"{name} uses variables the role does not define: {missing}"


STUB = """#!/bin/sh
# stands in for citc-power: records how it was started
{{
  echo "args=$*"
  echo "path=$PATH"
  echo "config=$CITC_POWER_CONFIG"
  grep -E '^Sig(Blk|Ign):' /proc/self/status
  for fd in 0 1 2; do [ -e /proc/self/fd/$fd ] && echo "fd$fd=open"; done
}} > {record}
echo "printed by the program"
"""


def _wrapper(tmp_path: Path, log_dir: Path) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    record = tmp_path / "record"
    stub = venv / "bin/citc-power"
    stub.write_text(STUB.format(record=record))
    stub.chmod(0o755)
    wrapper = tmp_path / "citc-power-resume"
    wrapper.write_text(render("bin/citc-power-program.j2", citc_power_venv=str(venv),
                              citc_power_config_file="/etc/citc/power.yaml",
                              citc_power_log_dir=str(log_dir),
                              item={"action": "resume", "key": "ResumeProgram"}))
    wrapper.chmod(0o755)
    return wrapper, record


def _like_slurmctld() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in (0, 1, 2):
        os.close(fd)


def _start_like_slurmctld(wrapper: Path, *args: str) -> None:
    subprocess.run([str(wrapper), *args], env={"SLURM_CONF": "/etc/slurm/slurm.conf"},
                   preexec_fn=_like_slurmctld, check=True, timeout=30)


def test_wrapper_gives_the_program_a_path_stdio_and_default_signals(tmp_path: Path):
    logs = tmp_path / "log"
    logs.mkdir()
    wrapper, record = _wrapper(tmp_path, logs)
    _start_like_slurmctld(wrapper, "cn[1-3]")
    seen = dict(line.split("=", 1) if "=" in line else line.split(":\t") for line in record.read_text().splitlines())
    assert seen["args"] == "resume cn[1-3]"
    assert seen["path"].startswith(f"{tmp_path}/venv/bin:")
    assert seen["config"] == "/etc/citc/power.yaml"
    # glibc keeps signals 32 and 33 for itself: no program can reset them, so they are not counted
    reserved = (1 << 31) | (1 << 32)
    assert int(seen["SigBlk"], 16) & ~reserved == 0 and int(seen["SigIgn"], 16) & ~reserved == 0
    assert seen["fd0"] == seen["fd1"] == seen["fd2"] == "open"
    assert (logs / "citc-power-programs.log").read_text() == "printed by the program\n"


def test_wrapper_still_runs_where_it_may_not_write_its_log(tmp_path: Path):
    wrapper, record = _wrapper(tmp_path, tmp_path / "no-such-dir")
    _start_like_slurmctld(wrapper)
    assert "args=resume\n" in record.read_text()

"""The real sushy-emulator (sushy-tools, fake driver) on 127.0.0.1, for the Redfish tests.

Run as a program, this file is a launcher: it starts sushy-tools' own ``main()`` (the same
code as the ``sushy-emulator`` command, with ``--fake``), after pinning how long the fake
driver takes to apply a power change. The fake driver in sushy-tools 2.x picks that delay with
``random.randint(1, 11)`` and has no setting for it, so tests would wait up to 11 s, at random.
The launcher makes that delay a per-ResetType number from the config file, ``None`` meaning
"accepted, and never carried out" (an OS that ignores the ACPI power button), and appends
every ResetType it receives to a journal file so tests can see what was asked for.
Everything else (HTTP, basic auth from an htpasswd file, Redfish resources, state) is
sushy-tools unchanged.

Used as a module: :class:`SushyEmulator` writes the config, htpasswd and state directory
under a test's tmp_path, starts the launcher on a free port and stops it.
"""
from __future__ import annotations

import base64
import json
import os
import pprint
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DELAYS_KEY = "CITC_TEST_POWER_DELAYS"  # ResetType -> seconds, or None for "ignored"
JOURNAL_KEY = "CITC_TEST_RESET_JOURNAL"  # file that gets one JSON line per reset request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SushyEmulator:
    """One sushy-emulator process with its own config, users and state directory."""

    def __init__(
        self,
        root: Path,
        systems: list[dict[str, Any]],
        users: dict[str, str],
        delays: dict[str, float | None] | None = None,
        tls: tuple[Path, Path] | None = None,
        extra_config: dict[str, Any] | None = None,
    ):
        self.root = root
        self.systems = systems
        self.users = users
        self.delays = {"default": 1} if delays is None else delays
        self.tls = tls
        self.extra_config = extra_config or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.journal = root / "resets.jsonl"
        self.log_file = root / "emulator.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> SushyEmulator:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self._write_config()
        argv = [sys.executable, __file__, "--config", str(config)]
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited: {self.log_file.read_text()[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        tail = self.log_file.read_text()[-2000:]
        raise RuntimeError(f"sushy-emulator did not answer in {timeout} s: {tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def resets(self) -> list[tuple[str, str]]:
        """Every reset asked for so far: (system uuid, ResetType), oldest first."""
        if not self.journal.exists():
            return []
        lines = self.journal.read_text().splitlines()
        return [(e["system"], e["reset"]) for e in map(json.loads, lines)]

    def reset_types(self) -> list[str]:
        return [reset for _, reset in self.resets()]

    def power_state(self, system: str, user: str, password: str) -> str:
        """The PowerState the emulator reports for ``system``, read with plain urllib."""
        return str(self.get(f"/redfish/v1/Systems/{system}", user, password)["PowerState"])

    def get(self, path: str, user: str, password: str) -> Any:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        request = urllib.request.Request(self.url + path, headers=headers)
        with _opener().open(request, timeout=10) as response:
            return json.load(response)

    def _answers(self) -> bool:
        try:
            with _opener().open(self.url + "/redfish/v1/", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _write_config(self) -> Path:
        htpasswd = self.root / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in self.users.items()))
        config: dict[str, Any] = {
            "SUSHY_EMULATOR_LISTEN_IP": "127.0.0.1",
            "SUSHY_EMULATOR_LISTEN_PORT": self.port,
            "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
            "SUSHY_EMULATOR_STATE_DIR": str(self.root / "state"),
            "SUSHY_EMULATOR_FAKE_SYSTEMS": self.systems,
            DELAYS_KEY: self.delays,
            JOURNAL_KEY: str(self.journal),
            **self.extra_config,
        }
        if self.tls:
            config["SUSHY_EMULATOR_SSL_CERT"], config["SUSHY_EMULATOR_SSL_KEY"] = map(str, self.tls)
        path = self.root / "emulator.conf"
        path.write_text("".join(f"{k} = {pprint.pformat(v)}\n" for k, v in config.items()))
        return path


def fake_system(name: str, uuid: str, power_state: str = "Off") -> dict[str, Any]:
    """One entry of SUSHY_EMULATOR_FAKE_SYSTEMS."""
    return {"uuid": uuid, "name": name, "power_state": power_state, "external_notifier": False,
            "nics": [{"mac": "00:5c:52:31:3a:9c", "ip": "172.22.0.100"}]}


def _bcrypt(password: str) -> str:
    import bcrypt  # a sushy-tools dependency

    # cost 4: these users only live for one test, and every request checks the hash
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _opener() -> urllib.request.OpenerDirector:
    # no proxies from the environment; the emulator's certificate is self-signed
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=context))


# -- the launcher ----------------------------------------------------------------------------

class _PinnedDelay:
    """Stands in for the ``random`` module inside sushy-tools' fake driver."""

    def __init__(self) -> None:
        self.local = threading.local()

    def randint(self, low: int, high: int) -> int:
        return int(self.local.delay)


def _pin_power_delays() -> None:
    from sushy_tools.emulator.resources.systems import fakedriver

    pinned = _PinnedDelay()
    fakedriver.random = pinned  # type: ignore[assignment]
    original = fakedriver.FakeDriver.set_power_state
    journal_lock = threading.Lock()

    def set_power_state(self: Any, identity: str, state: str) -> None:
        config = self._config
        with journal_lock, open(config[JOURNAL_KEY], "a") as journal:
            journal.write(json.dumps({"system": self.uuid(identity), "reset": state}) + "\n")
        delays = config.get(DELAYS_KEY) or {}
        delay = delays.get(state, delays.get("default", 1))
        if delay is None:
            return  # accepted and ignored, as by an OS that ignores the power button
        pinned.local.delay = delay
        original(self, identity, state)

    fakedriver.FakeDriver.set_power_state = set_power_state  # type: ignore[method-assign]


def main() -> int:
    os.environ.pop("SUSHY_EMULATOR_CONFIG", None)  # read at import; --config is the one to use
    from sushy_tools.emulator import main as emulator

    _pin_power_delays()
    sys.argv = ["sushy-emulator", "--fake", *sys.argv[1:]]
    return int(emulator.main() or 0)


if __name__ == "__main__":
    sys.exit(main())

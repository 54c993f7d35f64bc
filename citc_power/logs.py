"""Logging set-up: the only module that adds handlers.

slurmctld discards the programs' stdout and stderr, so everything goes to a log file, one line
per event, each with the pid and a run id that ties the lines of one invocation together.
``logrotate`` may move the file at any time: WatchedFileHandler reopens it.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import secrets
import sys
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)-7s [%(process)d %(run_id)s %(action)s] %(name)s: %(message)s"
RUN_ID = secrets.token_hex(3)
_state = {"action": "-"}


class _RunContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = RUN_ID
        record.action = _state["action"]
        return True


# pass as extra= for a line the command also prints itself, so the console shows it once
FILE_ONLY = {"to_console": False}


def setup(
    action: str,
    file: Optional[Path],
    level: str = "info",
    console: bool = False,
    verbose: bool = False,
) -> Optional[str]:
    """Send the suite's log lines to ``file`` (and to stderr when ``console``).

    Returns a warning to show if the file could not be opened (the lines then go to stderr).
    """
    _state["action"] = action
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    context = _RunContext()
    warning = None
    file_level = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.handlers.WatchedFileHandler(file)
            to_file.setLevel(file_level)
            to_file.setFormatter(logging.Formatter(FORMAT))
            to_file.addFilter(context)
            root.addHandler(to_file)
        except OSError as exc:
            warning = f"cannot write log file {file} ({exc.strerror}); logging to stderr"
            console = True
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.DEBUG if verbose else logging.WARNING)
        stream.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        stream.addFilter(context)
        stream.addFilter(lambda record: getattr(record, "to_console", True))
        root.addHandler(stream)
    # SDKs are chatty at debug level and may print request details; keep them at warning
    for noisy in ("oci", "urllib3", "keystoneauth", "openstack", "stevedore", "sushy", "pyipmi", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if warning:
        logging.getLogger(__name__).warning("%s", warning)
    logging.getLogger(__name__).debug("started: %s (pid %d, uid %d)", " ".join(sys.argv), os.getpid(), os.getuid())
    return warning

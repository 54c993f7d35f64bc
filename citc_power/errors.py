"""The exceptions of citc-power.

Everything the suite raises on purpose is a :class:`CitcPowerError`. The command line catches it
at the top and prints one line per problem on stderr; nothing below the CLI prints.
"""
from __future__ import annotations

from typing import Iterable


class CitcPowerError(Exception):
    """Root of every error the suite raises on purpose."""

    exit_code = 1


class UsageError(CitcPowerError):
    """Bad input on the command line (a malformed hostlist, a bad option)."""

    exit_code = 2


class HostlistError(UsageError):
    """A hostlist expression that Slurm would not accept."""


class ConfigError(UsageError):
    """One or more problems in the configuration, each of the form ``where: what, fix``."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def located(self, prefix: str) -> "ConfigError":
        """Return the same problems with ``prefix`` (usually the file name) in front."""
        return ConfigError(f"{prefix}: {p}" for p in self.problems)


class SlurmError(CitcPowerError):
    """scontrol or sinfo failed, or is missing."""


class ProviderError(CitcPowerError):
    """A provider could not do what was asked; ``code`` is the short word Slurm's reason shows."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class TransientError(ProviderError):
    """A failure worth retrying: throttling, 5xx, a reset connection, a timeout."""

    def __init__(self, message: str, code: str = "transient"):
        super().__init__(code, message)


class CapacityError(ProviderError):
    """The provider has no room for the node now (out of host capacity, quota, limit)."""

    def __init__(self, message: str, code: str = "capacity"):
        super().__init__(code, message)

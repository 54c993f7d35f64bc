"""Read and check one provider's settings, collecting every problem before raising once.

Usage inside ``Provider.from_settings``::

    s = SettingsReader(name, settings, KNOWN_KEYS)
    region = s.str("region")
    rate = s.float("max_requests_per_second", default=10.0, minimum=0.1)
    s.done()              # raises ConfigError listing every problem found above

Every problem names ``providers.<name>.<key>``, says what is wrong and how to fix it.
Nothing here talks to a provider; only local files are looked at.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, TypeVar

if TYPE_CHECKING:
    from typing import TypeAlias

from .errors import ConfigError

T = TypeVar("T")
# secrets already taken out of the environment, so a second reader in this process still finds them
_READ_FROM_ENV: dict[str, str] = {}
_MISSING: Any = object()
# SettingsReader has methods named like the builtins; annotations inside it use these
_Str: TypeAlias = str
_Int: TypeAlias = int
_Float: TypeAlias = float
_Bool: TypeAlias = bool
_List: TypeAlias = list


class SettingsReader:
    """Typed access to a provider's settings mapping with collected errors."""

    def __init__(self, provider: _Str, settings: Mapping[_Str, Any], known: Iterable[_Str] = ()):
        self.provider = provider
        self.settings = dict(settings)
        self.problems: list[_Str] = []
        self._known = set(known) | {"type"}

    def where(self, key: _Str) -> _Str:
        return f"providers.{self.provider}.{key}"

    def problem(self, key: _Str, text: _Str) -> None:
        """Record a problem with ``key``; ``text`` says what is wrong and the fix."""
        self.problems.append(f"{self.where(key)}: {text}")

    def _get(self, key: _Str, default: Any, kind: _Str) -> Any:
        if key in self.settings and self.settings[key] is not None:
            return self.settings[key]
        if default is _MISSING:
            self.problem(key, f"missing; set it to {kind}")
            return None
        return default

    def str(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, "a string")
        if value is None or value is default:
            return value
        if isinstance(value, _Bool) or not isinstance(value, (str, _Int, _Float)):
            self.problem(key, f"must be a string, not {type(value).__name__}")
            return default if default is not _MISSING else None
        return str(value)

    def choice(self, key: _Str, choices: Iterable[_Str], default: Any = _MISSING) -> Any:
        options = list(choices)
        value = self.str(key, default)
        if value is not None and value is not default and value not in options:
            self.problem(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def int(self, key: _Str, default: Any = _MISSING, minimum: Optional[_Int] = None) -> Any:
        return self._number(key, default, minimum, _Int, "a whole number")

    def float(self, key: _Str, default: Any = _MISSING, minimum: Optional[_Float] = None) -> Any:
        return self._number(key, default, minimum, _Float, "a number")

    def _number(self, key: _Str, default: Any, minimum: Any, kind: type, words: _Str) -> Any:
        value = self._get(key, default, words)
        if value is None or value is default:
            return value
        if isinstance(value, _Bool) or not isinstance(value, (int, _Float)) or (
            kind is int and not isinstance(value, _Int)
        ):
            self.problem(key, f"must be {words}, not {value!r}")
            return default if default is not _MISSING else None
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}, not {value!r}")
        return kind(value)

    def bool(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, "true or false")
        if value is not None and value is not default and not isinstance(value, _Bool):
            self.problem(key, f"must be true or false, not {value!r}")
            return default if default is not _MISSING else None
        return value

    def list(self, key: _Str, default: Any = _MISSING) -> Any:
        """A list of strings; a single string is taken as a list of one."""
        value = self._get(key, default, "a list of strings")
        if value is None or value is default:
            return value
        if isinstance(value, _Str):
            return [value]
        if not isinstance(value, _List) or not all(isinstance(v, (str, _Int)) for v in value):
            self.problem(key, "must be a list of strings")
            return default if default is not _MISSING else None
        return [str(v) for v in value]

    def mapping(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, "a mapping")
        if value is not None and value is not default and not isinstance(value, Mapping):
            self.problem(key, "must be a mapping of key: value")
            return default if default is not _MISSING else None
        return value

    def path(self, key: _Str, default: Any = _MISSING, must_exist: _Bool = True) -> Any:
        value = self.str(key, default)
        if value is None or value is default:
            return value
        path = Path(os.path.expanduser(value))
        if must_exist and not path.exists():
            self.problem(key, f"{path} does not exist; create it or point {key} elsewhere")
        return path

    def secret_file(self, key: _Str, default: Any = _MISSING) -> Any:
        """A path to a file holding a secret; refused if others can read it."""
        path = self.path(key, default, must_exist=True)
        if isinstance(path, Path) and path.exists():
            problem = secret_file_problem(path)
            if problem:
                self.problem(key, problem)
        return path

    def done(self) -> None:
        """Raise ConfigError with every problem found, including unknown keys."""
        for key in sorted(set(self.settings) - self._known):
            self.problem(key, f"unknown setting; known ones are {', '.join(sorted(self._known))}")
        if self.problems:
            raise ConfigError(self.problems)


def secret_file_problem(path: Path) -> Optional[str]:
    """Why ``path`` may not hold a secret, or None if it may."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror}); check the path and its permissions"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by group or others; run: chmod 600 {path}"
    return None


def read_secret(path: Optional[Path] = None, env: Optional[str] = None, what: str = "secret") -> str:
    """Read a secret from a file (mode checked) or from an environment variable.

    The variable is removed from the environment once read so that children never inherit it.
    The secret itself never appears in the exception text.
    """
    if path is not None:
        problem = secret_file_problem(path)
        if problem:
            raise ConfigError(f"{what}: {problem}")
        try:
            return path.read_text().strip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{what}: {path} cannot be read ({exc.strerror})") from None
    if env is not None:
        value = os.environ.pop(env, None)
        if value is None:
            value = _READ_FROM_ENV.get(env)
        else:
            _READ_FROM_ENV[env] = value
        if value is None:
            raise ConfigError(f"{what}: environment variable {env} is not set; export it")
        return value
    raise ConfigError(f"{what}: no secret configured; set a *_file or *_env setting")

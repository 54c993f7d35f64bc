"""The README documents every setting each provider accepts."""
from pathlib import Path

import pytest

from citc_power.providers import REGISTRY, provider_class

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_every_provider_setting_is_documented(type_name):
    section = README.split(f"#### `{type_name}`", 1)[1].split("#### ", 1)[0]
    missing = [key for key in provider_class(type_name).SETTINGS if f"| `{key}` |" not in section]
    assert not missing, f"README lacks settings of {type_name}: {missing}"

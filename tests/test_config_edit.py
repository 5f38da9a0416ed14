"""`set_instances` rewrites one value and keeps the user's comments and layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load, set_instances

CONFIG = """\
# Shop stack — edited by hand, keep these notes.
[services.api]
command = "python app.py --port {port}"  # the web tier
instances = 2   # bump for sales
port = 8001

[services.worker]
command = "python worker.py"

[services.worker.health]   # no instances key above this table
exec = "true"
"""


def _write(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_set_instances_keeps_comments_and_still_loads(tmp_path: Path) -> None:
    path = _write(tmp_path)

    set_instances(path, "api", 5)

    assert path.read_text() == CONFIG.replace("instances = 2   #", "instances = 5   #")
    assert load(path, environ={}).services["api"].instances == 5


def test_set_instances_adds_a_missing_key_before_subtables(tmp_path: Path) -> None:
    path = _write(tmp_path)

    set_instances(path, "worker", 3)

    text = path.read_text()
    assert 'command = "python worker.py"\ninstances = 3\n' in text
    assert "# no instances key above this table" in text
    plan = load(path, environ={})
    assert plan.services["worker"].instances == 3
    assert plan.services["worker"].health is not None


def test_set_instances_in_an_inline_table(tmp_path: Path) -> None:
    path = _write(tmp_path, 'services.api = { command = "api", instances = 1 }  # inline\n')

    set_instances(path, "api", 0)

    assert path.read_text() == 'services.api = { command = "api", instances = 0 }  # inline\n'


def test_set_instances_keeps_crlf_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_bytes(b'[services.api]\r\ncommand = "api"\r\ninstances = 1\r\n')
    path.chmod(0o640)

    set_instances(path, "api", 4)

    assert path.read_bytes() == b'[services.api]\r\ncommand = "api"\r\ninstances = 4\r\n'
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["corral.toml"]  # no temp file left


def test_set_instances_unknown_service(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.api]\ncommand = "api"\n')

    with pytest.raises(ConfigError) as info:
        set_instances(path, "web", 2)

    assert (info.value.key, info.value.message) == ("services.web", "no such service")


def test_set_instances_rejects_a_negative_count(tmp_path: Path) -> None:
    path = _write(tmp_path, '[services.api]\ncommand = "api"\n')

    with pytest.raises(ConfigError) as info:
        set_instances(path, "api", -1)

    assert info.value.key == "services.api.instances"
    assert path.read_text() == '[services.api]\ncommand = "api"\n'

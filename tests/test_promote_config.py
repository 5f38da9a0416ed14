"""The config keys promotion reads: `app` (an import path) and the env_file paths it keeps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config import ConfigError, load


def _load(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("app", ["app:app", "shop.web:application", "pkg.mod:obj.inner", "_a:_b"])
def test_app_import_paths_are_kept(tmp_path: Path, app: str) -> None:
    path = _load(
        tmp_path, f'[services.api]\ncommand = "python app.py"\nvenv = false\napp = "{app}"\n'
    )

    assert load(path, environ={}).services["api"].app == app


def test_app_defaults_to_none(tmp_path: Path) -> None:
    path = _load(tmp_path, '[services.api]\ncommand = "python app.py"\nvenv = false\n')

    assert load(path, environ={}).services["api"].app is None


@pytest.mark.parametrize(
    "bad", ['"app.py"', '"app"', '":app"', '"app:"', '"a-b:app"', '"app:app()"', "3"]
)
def test_bad_app_names_file_and_key(tmp_path: Path, bad: str) -> None:
    path = _load(
        tmp_path, f'[services.api]\ncommand = "python app.py"\nvenv = false\napp = {bad}\n'
    )

    with pytest.raises(ConfigError) as info:
        load(path, environ={})

    assert info.value.file == path
    assert info.value.key == "services.api.app"
    expected = "a string" if bad == "3" else 'an import path "module:attribute" like "app:app"'
    assert info.value.message == f"expected {expected}, got {bad}"


def test_env_files_are_kept_in_order_beside_the_merged_env(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\nB=from-a\n")
    (tmp_path / "b.env").write_text("B=from-b\n")
    path = _load(
        tmp_path,
        """
        [services.api]
        command = "python app.py"
        venv = false
        env_file = ["a.env", "b.env"]
        env = { C = "3" }
        """,
    )

    spec = load(path, environ={}).services["api"]

    root = tmp_path.resolve()
    assert spec.env_files == (root / "a.env", root / "b.env")
    assert spec.env == {"A": "1", "B": "from-b", "C": "3"}

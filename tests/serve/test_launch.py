"""What ``aegis-online serve`` hands its Ray driver: the same options, with paths made absolute first (the Ray
ingress runs elsewhere, with another working directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_online.rayserve.driver import parse
from aegis_online.rayserve.launch import Launch


def test_relative_data_dirs_become_absolute_before_the_driver_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AEGIS_SERVE_CONFIG", raising=False)
    launch = Launch(data_dir=Path("state"), port=8123).absolute()
    assert launch.data_dir == tmp_path / "state"
    settings, keys = launch.resolve()
    assert settings.store.data_dir == tmp_path / "state" and settings.server.port == 8123 and keys.open_mode
    default, _ = Launch().absolute().resolve()  # store.data_dir's default, relative to where serve started
    assert default.store.data_dir == tmp_path / "aegis-data"


def test_the_driver_reads_back_exactly_what_the_supervisor_was_given(tmp_path: Path) -> None:
    launch = Launch(config=tmp_path / "c.yaml", host="127.0.0.1", port=9000, data_dir=tmp_path / "d", log_level="DEBUG")
    args, again = parse(["--session", str(tmp_path), "--control-fd", "7", *launch.argv()])
    assert again == launch and args.session == tmp_path and args.control_fd == 7
    assert parse(["--session", "/s", "--control-fd", "3", *Launch().argv()])[1] == Launch()

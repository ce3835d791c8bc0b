"""The config loader names the bad key and lets the environment supply secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import ConfigError, load_config, parse_config

MINIMAL = {"clients": [{"access_key": "pictrs", "secret_key": "s3cret"}]}


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(MINIMAL, environ={})
    assert config.client_secret("pictrs") == "s3cret"
    assert config.client_secret("other") is None
    assert config.server.listen == "127.0.0.1:9000"
    assert config.real_bucket("anything") == "anything"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**MINIMAL, "limits": {"max_object_bytes": "ten"}}, "limits.max_object_bytes: expected an integer"),
        ({**MINIMAL, "limits": {"max_objekt_bytes": 1}}, "limits.max_objekt_bytes: unknown setting"),
        ({**MINIMAL, "upstream": {"addressing": "sideways"}}, "upstream.addressing: expected one of"),
        ({**MINIMAL, "server": {"listen": "nowhere"}}, "server.listen: expected HOST:PORT"),
        ({"clients": [{"access_key": "a"}]}, "clients[0].secret_key: required setting is missing"),
        ({"clients": []}, "clients: at least one"),
        ({**MINIMAL, "upstream": {"endpoint": "ftp://x"}}, "upstream.endpoint: expected an http"),
        ({**MINIMAL, "inference": {"timeout_s": -1}}, "inference.timeout_s: must not be negative"),
    ],
)
def test_bad_values_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert message in str(info.value)


def test_environment_overrides_secrets() -> None:
    env = {
        "BUCKETGUARD_CLIENT_PICTRS_SECRET": "from-env",
        "BUCKETGUARD_UPSTREAM_SECRET_KEY": "upstream-env",
        "BUCKETGUARD_ADMIN_TOKEN": "admin-env",
    }
    config = parse_config(MINIMAL, environ=env)
    assert config.client_secret("pictrs") == "from-env"
    assert config.upstream.secret_key == "upstream-env"
    assert config.server.admin_token == "admin-env"


def test_bucket_mapping() -> None:
    config = parse_config({**MINIMAL, "upstream": {"buckets": {"pictrs": "real-media"}}}, environ={})
    assert config.real_bucket("pictrs") == "real-media"
    assert config.real_bucket("other") is None


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bucketguard.toml"
    path.write_text('[[clients]]\naccess_key = "a"\nsecret_key = "b"\n[database]\nurl = "sqlite+aiosqlite:///state.db"\n')
    config = load_config(path, environ={})
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path}/state.db"
    assert config.quarantine.path == str(tmp_path / "quarantine")


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[clients]]\naccess_key = "a"\nsecret_key = "b"\n')
    assert main(["config", "check", "--offline", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[clients]]\naccess_key = "a"\nsecret_key = "b"\n[limits]\ntimeout = 3\n')
    assert main(["config", "check", "--offline", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "limits.timeout: unknown setting" in err
    assert err.count("\n") == 1

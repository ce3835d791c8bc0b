"""The deploy files parse, and every bucketguard command they run exists with those options.

Docker does not run here, so this checks what can be checked without it: compose YAML and TOML parse,
the example config passes the real loader, systemd accepts the units, and each `bucketguard ...` command
line in a Dockerfile, unit or compose file is accepted by the real argument parser.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from proxy.cli import build_parser
from proxy.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _bucketguard_command_lines() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix in {".toml", ".example"}:
            continue
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r'CMD\s+(\[.*?\])', text, re.S):
            argv = json.loads(match.group(1))
            if argv and argv[0] == "bucketguard":
                found.append((path.name, argv[1:]))
        for line in text.splitlines():
            line = line.strip()
            for prefix in ("ExecStart=", "ExecStartPre=", "RUN "):
                if line.startswith(prefix):
                    for part in line[len(prefix):].split("&&"):
                        argv = shlex.split(part.strip())
                        if argv and argv[0].endswith("bucketguard"):
                            found.append((path.name, argv[1:]))
    return found


def test_deploy_files_name_bucketguard_commands() -> None:
    commands = _bucketguard_command_lines()
    names = {" ".join(argv[:2]) for _, argv in commands}
    assert {"serve --config", "inference serve", "inference worker", "model build"} <= names, names


@pytest.mark.parametrize(("source", "argv"), _bucketguard_command_lines())
def test_each_command_line_is_accepted(source: str, argv: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    assert callable(getattr(args, "handler", None)), f"{source}: {argv} has no handler"


def test_compose_wires_pictrs_through_the_proxy() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"s3", "bucketguard", "inference", "pictrs"} <= set(services)
    pictrs_conf = tomllib.loads((DEPLOY / "pict-rs.toml").read_text())
    assert pictrs_conf["store"]["type"] == "object_storage"
    assert pictrs_conf["store"]["endpoint"] == "http://bucketguard:9000"
    proxy_conf = tomllib.loads((DEPLOY / "bucketguard.toml").read_text())
    assert proxy_conf["upstream"]["endpoint"] == "http://s3:9000"
    assert pictrs_conf["store"]["access_key"] in {c["access_key"] for c in proxy_conf["clients"]}
    assert pictrs_conf["store"]["bucket_name"] in proxy_conf["upstream"]["buckets"]
    assert pictrs_conf["store"]["region"] == proxy_conf["server"]["region"]


def test_example_config_loads_with_secrets_from_the_environment() -> None:
    env = {"BUCKETGUARD_CLIENT_PICTRS_SECRET": "from-env", "BUCKETGUARD_UPSTREAM_SECRET_KEY": "up"}
    config = load_config(DEPLOY / "bucketguard.toml", environ=env)
    assert config.client_secret("pictrs") == "from-env"
    assert config.upstream.secret_key == "up"
    assert Path(config.screening.policy).name == "policy.toml"


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    bucketguard = shutil.which("bucketguard") or str(Path(__file__).resolve().parents[1] / ".venv/bin/bucketguard")
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/bucketguard/bin/bucketguard", bucketguard)
        text = re.sub(r"^(EnvironmentFile=)(?!-)", r"\1-", text, flags=re.M)
        copy = tmp_path / unit.name
        copy.write_text(text)
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
        problems = [line for line in result.stderr.splitlines()
                    if unit.name in line and "bucketguard.service" not in line]
        assert not problems, problems

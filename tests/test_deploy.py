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
    assert "./bucketguard-compose.toml:/etc/bucketguard/bucketguard.toml:ro" in services["bucketguard"]["volumes"]
    proxy_conf = tomllib.loads((DEPLOY / "bucketguard-compose.toml").read_text())
    assert proxy_conf["upstream"]["endpoint"] == "http://s3:9000"
    assert pictrs_conf["store"]["access_key"] in {c["access_key"] for c in proxy_conf["clients"]}
    assert pictrs_conf["store"]["bucket_name"] in proxy_conf["upstream"]["buckets"]
    assert pictrs_conf["store"]["region"] == proxy_conf["server"]["region"]


COMPOSE_ENV = {"BUCKETGUARD_CLIENT_PICTRS_SECRET": "from-env", "BUCKETGUARD_UPSTREAM_ACCESS_KEY": "up-key",
               "BUCKETGUARD_UPSTREAM_SECRET_KEY": "up", "BUCKETGUARD_INFERENCE_TOKEN": "inf",
               "BUCKETGUARD_QUARANTINE_ACCESS_KEY": "q-key", "BUCKETGUARD_QUARANTINE_SECRET_KEY": "q"}
SINGLE_ENV = {"BUCKETGUARD_CLIENT_PICTRS_SECRET": "from-env", "BUCKETGUARD_UPSTREAM_ACCESS_KEY": "up-key",
              "BUCKETGUARD_UPSTREAM_SECRET_KEY": "up", "BUCKETGUARD_ADMIN_TOKEN": "adm",
              "BUCKETGUARD_VALIDATE_TOKEN": "val"}


@pytest.mark.parametrize(("name", "env", "mode"), [("bucketguard.toml", SINGLE_ENV, "in-process"),
                                                   ("bucketguard-compose.toml", COMPOSE_ENV, "remote")])
def test_example_configs_need_every_secret_from_the_environment(name: str, env: dict[str, str], mode: str) -> None:
    """Each example loads; its `set-by-...` placeholders are refused until the environment replaces them all."""
    from proxy.setup.checks import placeholder_problems, quarantine_exposure

    config = load_config(DEPLOY / name, environ=env)
    assert config.client_secret("pictrs") == "from-env" and config.upstream.secret_key == "up"
    assert config.inference.mode == mode and Path(config.screening.policy).name == "policy.toml"
    assert placeholder_problems(config) == [] and quarantine_exposure(config) == []
    bare = load_config(DEPLOY / name, environ={})
    refused = {p.key for p in placeholder_problems(bare)}
    assert {"clients[0].secret_key", "upstream.access_key", "upstream.secret_key"} <= refused
    assert len(refused) == len(env)


def test_single_host_example_is_what_init_writes() -> None:
    """deploy/bucketguard.toml and `bucketguard init --layout single` set up the same proxy (secrets aside)."""
    from proxy.setup.init import InitOptions, render_config

    example = load_config(DEPLOY / "bucketguard.toml", environ=SINGLE_ENV)
    options = InitOptions(folder=Path("/etc/bucketguard"), upstream_endpoint=example.upstream.endpoint,
                          real_bucket="pictrs-media", listen="127.0.0.1:9000",
                          packs=("/var/lib/bucketguard/packs/nsfw-age",))
    written = tomllib.loads(render_config(options, client_secret="s", admin_token="a", validate_token="v",
                                          inference_token="i", worker_tokens={}, data=Path("/var/lib/bucketguard"),
                                          policy=Path("/etc/bucketguard/policy.toml")))
    for section in ("inference", "quarantine", "database", "limits"):
        shipped = tomllib.loads((DEPLOY / "bucketguard.toml").read_text())[section]
        assert {k: v for k, v in written[section].items() if k in shipped} == shipped, section
    assert written["upstream"]["buckets"] == {"pictrs": "pictrs-media"}


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

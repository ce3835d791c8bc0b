"""Ceph RGW on loopback for the test suite: a one-node cluster (one monitor, one memstore OSD) and radosgw.

Debian bookworm ships Ceph 16 (Pacific), whose radosgw has no `dbstore` backend yet, so RGW needs RADOS:
a monitor and one OSD keeping its objects in memory (`osd objectstore = memstore`), pools of size one,
authentication off (loopback only). radosgw defaults to a secure (cephx-only) monitor connection, so the
config sets `ms mon client mode = crc` for it. Everything lives in a temporary folder; the daemons run in
the foreground as children of the test process and are terminated at the end of the session.
Ready in a few seconds; the fixture fails loudly (with the daemons' logs) when it is not.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.moto import S3Server, free_port

RGW_KEY = "bucketguard-rgw-key"
RGW_SECRET = "bucketguard-rgw-secret-0123456789"
DAEMONS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")


def _config(folder: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
auth cluster required = none
auth service required = none
auth client required = none
ms bind ipv6 = false
ms mon client mode = crc
run dir = {folder}/run
admin socket = {folder}/run/$name.asok
log file = {folder}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd pool default pg num = 1
osd pool default pgp num = 1
osd pool default pg autoscale mode = off
mon warn on pool no redundancy = false
client mount timeout = 20
# start-up speed: radosgw creates its pools one by one at start; shorter monitor rounds make that seconds
paxos propose interval = 0.05
paxos min wait = 0.01
mon tick interval = 1
osd mon report interval = 1
[mon]
mon data = {folder}/mon/$cluster-$id
[osd]
osd data = {folder}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = 1073741824
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {folder}/rgw
rgw enable usage log = false
"""


class Cluster:
    """The three daemons of a one-node RGW, started in order and stopped in reverse."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "ceph.conf"
        self.processes: list[subprocess.Popen] = []
        self.rgw_port = free_port()

    def _run(self, *argv: str) -> str:
        result = subprocess.run([*argv, "-c", str(self.conf)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                               f"\n{self.logs()}")
        return result.stdout

    def _daemon(self, *argv: str) -> None:
        log = (self.folder / "log" / f"{argv[0]}.out").open("wb")
        self.processes.append(subprocess.Popen([*argv, "-f", "-c", str(self.conf)], stdout=log,
                                               stderr=subprocess.STDOUT))

    def logs(self) -> str:
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def start(self) -> S3Server:
        for sub in ("run", "log", "mon", "osd/ceph-0", "rgw"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        fsid, mon_port = str(uuid.uuid4()), free_port()
        self.conf.write_text(_config(self.folder, fsid, mon_port, self.rgw_port))
        monmap = self.folder / "monmap"
        subprocess.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                        str(monmap)], check=True, capture_output=True, timeout=30)
        self._run("ceph-mon", "-i", "a", "--mkfs", "--monmap", str(monmap))
        self._daemon("ceph-mon", "-i", "a")
        osd_id = self._run("ceph", "osd", "create").strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs")
        self._daemon("ceph-osd", "-i", osd_id)
        self._daemon("radosgw", "-n", "client.rgw")
        endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self._wait(endpoint)
        self._run("radosgw-admin", "-n", "client.rgw", "user", "create", "--uid", "bucketguard",
                  "--display-name", "bucketguard", "--access-key", RGW_KEY, "--secret", RGW_SECRET)
        return S3Server(endpoint, RGW_KEY, RGW_SECRET, signature_checking=True)

    def _wait(self, endpoint: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(endpoint, timeout=2).status_code == 200:  # anonymous ListBuckets
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"radosgw at {endpoint} did not start in {timeout:.0f} s:\n{self.logs()}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def rgw_installed() -> bool:
    return all(shutil.which(name) for name in (*DAEMONS, "ceph"))


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Ceph RGW (Debian's radosgw) with one user whose keys are the server's `access_key`/`secret_key`."""
    assert rgw_installed(), "radosgw, ceph-mon and ceph-osd must be installed (scripts/bootstrap dev installs them)"
    cluster = Cluster(tmp_path_factory.mktemp("rgw"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()

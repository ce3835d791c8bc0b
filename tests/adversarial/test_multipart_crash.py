"""A proxy killed (kill -9) while CompleteMultipartUpload is screening leaves the upload in `completing`.

A real `bucketguard serve` subprocess screens through a remote inference endpoint that accepts the request
and never answers, so Complete is provably inside the screen when the proxy is killed. Afterwards the
upload must be recoverable: a retried Complete lands it, an Abort removes it, or the janitor aborts it; in
every case the unscreened staging object is gone from the real bucket (listed directly on moto).
"""

from __future__ import annotations

import contextlib
import io
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import botocore.exceptions
import pytest
from PIL import Image

from tests.support.proxy import CLIENT_BUCKET, new_bucket, start_subprocess, write_config

pytestmark = pytest.mark.slow  # each test starts two `bucketguard serve` processes and kills one

LEASE_S = 2.0


class SilentInference:
    """A TCP server that reads requests and never answers: the screen waits on it until the proxy dies."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.asked = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                self.asked.set()
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening (connections are refused from now on) and drop the held ones."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
        self.sock.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentInference]:
    server = SilentInference()
    yield server
    server.close()


def _png() -> bytes:
    image = Image.effect_noise((96, 96), 64).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _state(db_path, upload_id: str) -> str:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT state FROM multipart_uploads WHERE upload_id = ?", (upload_id,)).fetchone()[0]


def _killed_while_completing(moto_server, tmp_path, silent: SilentInference, janitor: str = ""):
    """Start a proxy, upload one part, kill -9 it inside Complete's screen; return what the test needs."""
    real_bucket = new_bucket(moto_server)
    inference = (f'mode = "remote"\nendpoints = ["http://127.0.0.1:{silent.port}"]\ntimeout_s = 120.0\n'
                 'retries = 0\ntoken = "inference-token"')
    limits = f"multipart_lease_s = {LEASE_S}\n{janitor or 'janitor_interval_s = 0.0'}"
    config_path = write_config(tmp_path, moto_server, real_bucket, inference=inference, limits=limits,
                               screening="scan_timeout_s = 120.0")
    proxy = start_subprocess(config_path, moto_server, real_bucket)
    s3 = proxy.client()
    data = _png()
    upload_id = s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="crash/image.png",
                                           ContentType="image/png")["UploadId"]
    etag = s3.upload_part(Bucket=CLIENT_BUCKET, Key="crash/image.png", UploadId=upload_id, PartNumber=1,
                          Body=data)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}

    def complete() -> None:
        with contextlib.suppress(Exception):  # the connection dies with the proxy
            proxy.client(read_timeout=300).complete_multipart_upload(
                Bucket=CLIENT_BUCKET, Key="crash/image.png", UploadId=upload_id, MultipartUpload=parts)

    threading.Thread(target=complete, daemon=True).start()
    assert silent.asked.wait(60), "Complete never reached the screen"
    assert _state(tmp_path / "state.db", upload_id) == "completing"
    proxy.process.kill()  # kill -9
    proxy.process.wait()
    staged = moto_server.keys(real_bucket, ".bucketguard/")
    assert staged, "the staging object should be complete upstream when the proxy dies"
    assert "crash/image.png" not in moto_server.keys(real_bucket)
    silent.close()  # detectors away from now on: the retried screen defers (the default policy) instead
    return config_path, real_bucket, upload_id, parts, data


def test_retried_complete_recovers_after_kill(moto_server, tmp_path, silent) -> None:
    config_path, real_bucket, upload_id, parts, data = _killed_while_completing(moto_server, tmp_path, silent)
    proxy = start_subprocess(config_path, moto_server, real_bucket)
    try:
        s3 = proxy.client()
        time.sleep(LEASE_S + 0.5)
        result = s3.complete_multipart_upload(Bucket=CLIENT_BUCKET, Key="crash/image.png", UploadId=upload_id,
                                              MultipartUpload=parts)
        assert result["ETag"].endswith('-1"')
        assert moto_server.get(real_bucket, "crash/image.png") == data
        assert moto_server.keys(real_bucket, ".bucketguard/") == []
        assert moto_server.multipart_uploads(real_bucket) == []
        assert _state(tmp_path / "state.db", upload_id) == "done"
    finally:
        proxy.stop()


def test_abort_recovers_after_kill(moto_server, tmp_path, silent) -> None:
    config_path, real_bucket, upload_id, _, _ = _killed_while_completing(moto_server, tmp_path, silent)
    proxy = start_subprocess(config_path, moto_server, real_bucket)
    try:
        s3 = proxy.client()
        time.sleep(LEASE_S + 0.5)
        s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="crash/image.png", UploadId=upload_id)
        assert moto_server.keys(real_bucket) == []  # neither the staging object nor the key
        assert moto_server.multipart_uploads(real_bucket) == []
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.abort_multipart_upload(Bucket=CLIENT_BUCKET, Key="crash/image.png", UploadId=upload_id)
        assert info.value.response["Error"]["Code"] == "NoSuchUpload"
    finally:
        proxy.stop()


def test_janitor_removes_what_nobody_came_back_for(moto_server, tmp_path, silent) -> None:
    janitor = "janitor_interval_s = 0.5\nstale_upload_age_s = 1.0"
    config_path, real_bucket, upload_id, _, _ = _killed_while_completing(moto_server, tmp_path, silent, janitor)
    # A staging object no upload row knows (a proxy killed between the verdict and the delete).
    moto_server.client().put_object(Bucket=real_bucket, Key=".bucketguard/staging/orphan", Body=b"unscreened")
    # A landing (the part copies onto the client's key) cut off by a kill leaves an upload on that key.
    moto_server.client().create_multipart_upload(Bucket=real_bucket, Key="crash/image.png")
    proxy = start_subprocess(config_path, moto_server, real_bucket)
    try:
        deadline = time.monotonic() + 30
        # the janitor drops what it has seen unowned for the stale age: objects and uploads may go in two rounds
        while time.monotonic() < deadline and (moto_server.keys(real_bucket)
                                               or moto_server.multipart_uploads(real_bucket)):
            time.sleep(0.25)
        assert moto_server.keys(real_bucket) == []
        assert moto_server.multipart_uploads(real_bucket) == []
        assert _state(tmp_path / "state.db", upload_id) == "aborted"
    finally:
        proxy.stop()

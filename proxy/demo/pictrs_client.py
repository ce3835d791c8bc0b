"""An S3 client that sends exactly what pict-rs sends (see shared/PICTRS.md), for the demo and the tests.

Two generations: `presigned` (pict-rs 0.4 to 0.5.16, rusty-s3: SigV4 query signing, UNSIGNED-PAYLOAD,
a Range on every GET, `?uploads=1`, Content-MD5 on parts, health check `HEAD /{bucket}/`) and `header`
(0.5.17+, object_store: `Authorization` header with the hex SHA-256 of the body, every header but
content-length and user-agent signed, Range only for partial reads, health check PUT of `health-check`).
Both speak virtual-host addressing (pict-rs's default) or path style.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from defusedxml import ElementTree

Generation = Literal["presigned", "header"]
PART_BYTES = 8 * 1024 * 1024


class PictrsError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str:
        try:
            root = ElementTree.fromstring(self.body)
        except Exception:
            return ""
        return root.findtext("Code") or ""


@dataclass
class PictrsClient:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    generation: Generation = "header"
    path_style: bool = False
    vhost_domain: str = "localhost"
    session_token: str = ""
    expires_s: int = 15
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self._http = httpx.Client(timeout=self.timeout_s)
        parts = urlsplit(self.endpoint)
        self._port = parts.port
        self._scheme = parts.scheme

    def close(self) -> None:
        self._http.close()

    # ---- signing -----------------------------------------------------------------------------------------

    def _host(self) -> str:
        if self.path_style:
            return urlsplit(self.endpoint).netloc
        return f"{self.bucket}.{self.vhost_domain}:{self._port}"

    def _path(self, key: str) -> str:
        encoded = quote(key, safe="/~")
        return f"/{self.bucket}/{encoded}" if self.path_style else f"/{encoded}"

    def _send(self, method: str, key: str, *, query: str = "", body: bytes = b"",
              headers: Mapping[str, str] | None = None, unsigned_headers: Mapping[str, str] | None = None,
              bucket_only: bool = False) -> httpx.Response:
        path = (f"/{self.bucket}/" if self.path_style else "/") if bucket_only else self._path(key)
        host = self._host()
        url = f"{self._scheme}://{host}{path}" + (f"?{query}" if query else "")
        creds = Credentials(self.access_key, self.secret_key, self.session_token or None)
        signed = dict(headers or {})
        if self.generation == "presigned":
            request = AWSRequest(method=method, url=url, headers=signed)
            S3SigV4QueryAuth(creds, "s3", self.region, expires=self.expires_s).add_auth(request)
            send_headers = {"Host": host, **signed}
            final_url = request.url
        else:
            signed["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
            request = AWSRequest(method=method, url=url, headers=signed, data=body)
            S3SigV4Auth(creds, "s3", self.region).add_auth(request)
            send_headers = {"Host": host, **dict(request.headers.items())}
            final_url = url
        send_headers.update(unsigned_headers or {})
        split = urlsplit(final_url)
        target = f"{self.endpoint}{split.path}" + (f"?{split.query}" if split.query else "")
        return self._http.request(method, target, content=body if body else None, headers=send_headers)

    @staticmethod
    def _check(response: httpx.Response, *ok: int) -> httpx.Response:
        if response.status_code not in (ok or (200,)):
            raise PictrsError(response.status_code, response.content)
        return response

    # ---- operations --------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> str:
        headers = {"content-type": content_type}
        if self.generation == "presigned":
            headers["content-length"] = str(len(data))
        response = self._check(self._send("PUT", key, body=data, headers=headers))
        return response.headers.get("etag", "")

    def get(self, key: str, range_: str | None = None) -> bytes:
        """pict-rs <= 0.5.16 sends a Range on every GET; 0.5.17 only for partial reads (and wants 206)."""
        if range_ is None and self.generation == "presigned":
            range_ = "bytes=0-"
        if self.generation == "header":
            headers = {"range": range_} if range_ else {}
            response = self._send("GET", key, headers=headers)
        else:
            response = self._send("GET", key, unsigned_headers={"range": range_} if range_ else None)
        if range_:
            self._check(response, 206, 200)
            if response.status_code == 206 and "content-range" not in response.headers:
                raise PictrsError(response.status_code, b"206 without Content-Range")
        else:
            self._check(response, 200)
        return response.content

    def head(self, key: str) -> int:
        response = self._check(self._send("HEAD", key))
        return int(response.headers["content-length"])

    def delete(self, key: str) -> None:
        self._check(self._send("DELETE", key), 204, 200)

    def health_check(self) -> None:
        if self.generation == "presigned":
            self._check(self._send("HEAD", "", bucket_only=True))
        else:
            self.put("health-check", b"", "application/octet-stream")

    def create_multipart(self, key: str, content_type: str) -> str:
        query = "uploads=1" if self.generation == "presigned" else "uploads"
        response = self._check(self._send("POST", key, query=query, headers={"content-type": content_type}))
        upload_id = ElementTree.fromstring(response.content).findtext(
            "{http://s3.amazonaws.com/doc/2006-03-01/}UploadId")
        if not upload_id:
            raise PictrsError(response.status_code, response.content)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        headers = {}
        if self.generation == "presigned":
            headers = {"content-length": str(len(data)),
                       "content-md5": base64.b64encode(hashlib.md5(data).digest()).decode()}  # noqa: S324
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='')}"
        response = self._check(self._send("PUT", key, query=query, body=data, headers=headers))
        return response.headers["etag"]

    def complete_multipart(self, key: str, upload_id: str, etags: dict[int, str]) -> bytes:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>" for n in sorted(etags))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        response = self._check(self._send("POST", key, query=f"uploadId={quote(upload_id, safe='')}", body=body))
        if b"<Error>" in response.content:
            raise PictrsError(response.status_code, response.content)
        return response.content

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._check(self._send("DELETE", key, query=f"uploadId={quote(upload_id, safe='')}"), 204, 200)

    def put_multipart(self, key: str, data: bytes, content_type: str, *, part_bytes: int = PART_BYTES,
                      empty_last_part: bool = False, concurrency: int = 4) -> bytes:
        """pict-rs's multipart upload: parts in parallel, out of order; aborts on any failure."""
        upload_id = self.create_multipart(key, content_type)
        chunks = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)]
        if empty_last_part:
            chunks.append(b"")
        numbered = list(enumerate(chunks, start=1))
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                etags = dict(pool.map(lambda item: (item[0], self.upload_part(key, upload_id, *item)),
                                      reversed(numbered)))
            return self.complete_multipart(key, upload_id, etags)
        except Exception:
            with contextlib.suppress(PictrsError):
                self.abort_multipart(key, upload_id)
            raise

    def store(self, key: str, data: bytes, content_type: str) -> bytes:
        """What pict-rs does with one processed upload: write it, then read it straight back."""
        if len(data) >= PART_BYTES:
            self.put_multipart(key, data, content_type)
        else:
            self.put(key, data, content_type)
        return self.get(key)

"""The pack's ONNX graphs served by NVIDIA Triton or any KServe v2 server; pre- and post-processing stay here.

`KServeSession` stands in for an onnxruntime InferenceSession: `run(outputs, feeds)` sends the tensors to
`POST /v2/models/{model}/infer` (the KServe v2 HTTP/REST protocol, JSON tensors) on one of several endpoints,
balanced by `inference.fleet.EndpointPool` (least outstanding requests, back-off, health checks on
`/v2/health/ready`). The detectors run unchanged on top of it, so decoding, resizing, normalising, NMS, face
crops and the concept rules are bucketguard's, and the signals are the in-process engine's.

Choose it with `RuntimeOptions(kserve=("http://triton:8000", ...))`; the model names are `Pack.model_name(role)`,
as `bucketguard model triton-repo PACK OUT` writes them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from inference.fleet import EndpointPool

#: KServe v2 datatypes and numpy's.
DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
             "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
_NUMPY = {np.dtype(v): k for k, v in DATATYPES.items()}
#: Bound on one response body: the largest output of a pack (NudeNet, 22 x 2100 floats per image) at batch 64.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class KServeError(RuntimeError):
    """A KServe v2 endpoint answered with something that is not a v2 response for this request."""


class KServeUnavailable(ConnectionError):
    """No KServe v2 endpoint answered: an outage (the policy's `on_unavailable` applies), not a property of the
    bytes."""


_pools: dict[tuple[str, ...], EndpointPool] = {}
_pools_lock = threading.Lock()


def shared_pool(endpoints: Sequence[str]) -> EndpointPool:
    """One pool per endpoint list, shared by every session of an engine (so outstanding counts add up)."""
    key = tuple(e.rstrip("/") for e in endpoints)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = EndpointPool(key, health_path="/v2/health/ready")
        return _pools[key]


def encode_request(feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> bytes:
    inputs = []
    for name, array in feeds.items():
        array = np.ascontiguousarray(array)
        try:
            datatype = _NUMPY[array.dtype]
        except KeyError as exc:
            raise KServeError(f"input {name}: dtype {array.dtype} has no KServe v2 datatype") from exc
        inputs.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                       "data": array.ravel().tolist()})
    return json.dumps({"inputs": inputs, "outputs": [{"name": name} for name in outputs]}).encode()


def decode_response(body: Any, outputs: Sequence[str], where: str) -> list[np.ndarray]:
    try:
        found = {item["name"]: item for item in body["outputs"]}
        arrays = []
        for name in outputs:
            item = found[name]
            dtype = DATATYPES[item["datatype"]]
            arrays.append(np.asarray(item["data"], dtype=dtype).reshape([int(d) for d in item["shape"]]))
    except (KeyError, TypeError, ValueError) as exc:
        raise KServeError(f"{where}: not a KServe v2 response with outputs {', '.join(outputs)}: {exc!r}") from exc
    return arrays


class KServeSession:
    """An onnxruntime-like session whose `run` is a KServe v2 inference request."""

    def __init__(self, endpoints: Sequence[str], model: str, *, timeout_s: float = 30.0, retries: int = 1,
                 headers: dict[str, str] | None = None) -> None:
        self.pool = shared_pool(endpoints)
        self.model = model
        self.retries = retries
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
                                    headers={"Content-Type": "application/json", **(headers or {})})

    def get_providers(self) -> list[str]:
        return ["KServeV2"]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not output_names:
            raise KServeError(f"{self.model}: name the outputs to fetch")
        body = encode_request(feeds, output_names)
        errors: list[str] = []
        for index in self.pool.attempts(self.retries):
            url = f"{self.pool.states[index].url}/v2/models/{self.model}/infer"
            try:
                with self._client.stream("POST", url, content=body) as response:
                    data = b""
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise KServeError(f"{url}: response over {MAX_RESPONSE_BYTES} bytes")
            except httpx.HTTPError as exc:
                self.pool.release(index, ok=False)
                errors.append(f"{url}: {type(exc).__name__}")
                continue
            if response.status_code >= 500:
                self.pool.release(index, ok=response.status_code == 503)
                errors.append(f"{url}: HTTP {response.status_code}")
                continue
            self.pool.release(index, ok=True)
            if response.status_code != 200:
                raise KServeError(f"{url}: HTTP {response.status_code}: {data[:300]!r}")
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                raise KServeError(f"{url}: the answer is not JSON") from exc
            return decode_response(parsed, output_names, url)
        raise KServeUnavailable("no KServe v2 endpoint answered: " + "; ".join(errors))

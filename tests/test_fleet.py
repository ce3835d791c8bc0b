"""Several inference services balanced by the client: least outstanding requests, back-off, health checks.

Real bucketguard inference services (the test pack) run on loopback; a "slow GPU box" is the same service
behind an ASGI wrapper that waits before answering.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from inference.client import InferenceClient, InferenceUnavailable
from inference.engine import Engine
from inference.fleet import EndpointPool
from inference.service import create_inference_app
from proxy.demo.servers import bound_socket, serve_in_thread


class Server:
    """An inference service in a thread, on `sock` when given (a port held since before the service ran)."""

    def __init__(self, pack: Path, *, sock: socket.socket | None = None, delay_s: float = 0.0) -> None:
        self.engine = Engine.from_packs([pack])
        app = create_inference_app(self.engine, "sekrit")

        async def wrapped(scope, receive, send) -> None:
            if delay_s and scope["type"] == "http" and scope["path"] == "/v1/screen":
                await asyncio.sleep(delay_s)
            await app(scope, receive, send)

        self.endpoint, self.stop = serve_in_thread(wrapped, sock=sock)

    def warm_up(self) -> None:
        """One request first, so the decode workers (processes, started on first use) are up before counting."""
        response = httpx.post(f"{self.endpoint}/v1/screen", content=png((1, 1, 1)), timeout=120,
                              headers={"Authorization": "Bearer sekrit", "Content-Type": "image/png"})
        assert response.status_code == 200, response.text


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_pool_picks_least_outstanding_backs_off_and_probes_when_all_are_down() -> None:
    pool = EndpointPool(["http://a", "http://b", "http://c"], base_backoff_s=10, max_backoff_s=40)
    first, second, third = pool.acquire(), pool.acquire(), pool.acquire()
    assert {first, second, third} == {0, 1, 2}  # idle endpoints are used in turn
    pool.release(1, ok=True)
    assert pool.acquire() == 1  # the only one with nothing in flight
    pool.release(0, ok=False)
    assert pool.backing_off() == [0] and pool.states[0].outstanding == 0
    for index in (1, 1, 2):
        pool.release(index, ok=True)
    assert pool.acquire(exclude={1, 2}) == 0  # everything else excluded: the one in back-off is still tried
    pool.release(0, ok=False)
    waits = [pool.states[0].down_until - time.monotonic()]
    pool.acquire(exclude={1, 2})
    pool.release(0, ok=False)
    waits.append(pool.states[0].down_until - time.monotonic())
    assert 15 < waits[0] <= 20 and 35 < waits[1] <= 40  # 10, 20, then 40 (the cap): doubling per failure
    assert pool.acquire(exclude={0, 1, 2}) is None
    pool.mark_healthy(0)
    assert pool.backing_off() == []


def test_a_slow_endpoint_gets_fewer_requests_than_fast_ones(test_pack_path: Path) -> None:
    fast = [Server(test_pack_path) for _ in range(2)]
    slow = Server(test_pack_path, delay_s=1.0)
    try:
        for server in [*fast, slow]:
            server.warm_up()

        async def scenario() -> Counter:
            client = InferenceClient([slow.endpoint, *(s.endpoint for s in fast)], "sekrit", timeout_s=30)

            async def worker(number: int) -> list[str]:  # six callers, each sending as soon as it has an answer
                return [(await client.screen(png((number, i, 90)), "image/png")).decided_by for i in range(8)]

            try:
                results = await asyncio.gather(*(worker(n) for n in range(6)))
            finally:
                await client.close()
            return Counter(endpoint for answers in results for endpoint in answers)

        served = asyncio.run(scenario())
        assert sum(served.values()) == 48 and set(served) == {slow.endpoint, *(s.endpoint for s in fast)}
        for server in fast:  # balanced, not failed over: both fast ones work, each more than the slow one
            assert served[server.endpoint] > served[slow.endpoint], served
    finally:
        for server in [*fast, slow]:
            server.stop()


def test_a_dead_endpoint_backs_off_and_comes_back_after_a_health_check(test_pack_path: Path) -> None:
    live = Server(test_pack_path)
    held = bound_socket()  # bound, not listening: refused now, and no other server can take the port meanwhile
    dead = f"http://127.0.0.1:{held.getsockname()[1]}"
    revived = None
    try:
        async def scenario() -> None:
            nonlocal revived
            client = InferenceClient([dead, live.endpoint], "sekrit", timeout_s=10, retries=1, backoff_s=600,
                                     cooldown_s=600)
            try:
                results = [await client.screen(png((10, 20, i)), "image/png") for i in range(6)]
                assert all(r.decided_by == live.endpoint for r in results)
                state = client.pool.states[0]
                assert state.failures == 1 and client.pool.backing_off() == [0]  # tried once, then left alone
                revived = await asyncio.to_thread(Server, test_pack_path, sock=held)
                # Each screen() starts a background probe of /healthz once probe_interval_s has passed (set back
                # here); one that timed out on a loaded machine is followed by another, until a deadline far
                # inside the 600 s back-off.
                deadline = time.monotonic() + 60
                while client.pool.backing_off() and time.monotonic() < deadline:
                    if client._probe is None or client._probe.done():
                        client._last_probe = 0.0  # as if probe_interval_s had passed
                        await client.screen(png((9, 9, 9)), "image/png")
                    await asyncio.sleep(0.05)
                assert client.pool.backing_off() == []
                assert (state.failures, state.down_until, state.served) == (0, 0.0, 0)  # by the probe, not a call
                results = await asyncio.gather(*(client.screen(png((i, 20, 30)), "image/png") for i in range(8)))
                assert Counter(r.decided_by for r in results)[dead] >= 2
                revived.stop()
                nobody_left = InferenceClient([dead], "sekrit", timeout_s=2, retries=0)
                with pytest.raises(InferenceUnavailable):
                    await nobody_left.screen(png((1, 2, 3)), "image/png")
                await nobody_left.close()
            finally:
                await client.close()

        asyncio.run(scenario())
    finally:
        live.stop()
        if revived is not None:
            revived.stop()
        held.close()  # its own once served on (uvicorn closed it); the held port when the test failed before

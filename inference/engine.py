"""The in-process inference engine: decode in killable worker processes, batch frames per detector, merge signals.

`Engine.screen(data, content_type)` is the interface every detector front offers (this engine, the HTTP
client of the inference service, the pull-mode queue): it returns named signals and never decides. Bytes
that cannot be decoded (corrupt, over the decode budget, or stopped at the decode processes' CPU-time,
memory or wall limit) come back as an `undecodable` result; only an outage raises (QueueFull).

On the CPU the engine keeps every core computing: each ONNX Runtime session runs on the calling thread
alone (unless `intra_op_threads` is set) and each detector runs one batch per core at once. A session that
splits each operator over the cores makes its caller wait at every operator's join for a thread the
scheduler has not run yet (the decode workers share those cores): measured, the process then used well
under one core of two. On a GPU (or a KServe server) one batch at a time, as large as the queue allows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.batcher import Batcher, QueueFull
from inference.decode_pool import DecodeBusy, DecodeLimitExceeded, DecodeLimits, DecodePool
from inference.detectors import Detector, load_detector
from inference.media import DecodeSpec, Media, MediaLimits, decode
from inference.packs import load_pack
from inference.runtime import CPU, RuntimeOptions, usable_cores


@dataclass
class ScreenResult:
    signals: dict[str, float]
    detectors: dict[str, dict[str, float]] = field(default_factory=dict)
    packs: list[dict[str, str]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    undecodable: bool = False
    reason: str = ""
    frames: int = 0
    decided_by: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScreenResult:
        return cls(signals={str(k): float(v) for k, v in data["signals"].items()},
                   detectors={str(k): {str(a): float(b) for a, b in v.items()}
                              for k, v in (data.get("detectors") or {}).items()},
                   packs=list(data.get("packs") or []), timings_ms=dict(data.get("timings_ms") or {}),
                   undecodable=bool(data.get("undecodable")), reason=str(data.get("reason") or ""),
                   frames=int(data.get("frames") or 0), decided_by=str(data.get("decided_by") or ""))

    @property
    def pack_versions(self) -> dict[str, str]:
        return {p["name"]: p["version"] for p in self.packs}


def merge_frames(per_frame: Sequence[dict[str, float]]) -> dict[str, float]:
    """Signals over frames: the maximum, except `min_*` signals, which take the minimum."""
    merged: dict[str, float] = {}
    for signals in per_frame:
        for name, value in signals.items():
            if name not in merged:
                merged[name] = value
            elif name.startswith("min_"):
                merged[name] = min(merged[name], value)
            else:
                merged[name] = max(merged[name], value)
    return merged


#: At most this many batches of one detector at once by default: each holds its own activations (measured:
#: NudeNet's peak RSS grows 10 MiB for a batch of 1, 118 MiB for 16), so a many-core host stays bounded.
MAX_DEFAULT_WORKERS = 8


#: Frames of at most this many pixels in all are prepared on the caller's thread: resizing a few thumbnails for
#: a small model takes tens of microseconds, less than a hand-off to a thread and back (measured under load).
INLINE_PREPARE_PIXELS = 128 * 128


def _default_workers(detector: Detector, intra_op_threads: int) -> int:
    if detector.provider != CPU:
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores() // max(1, intra_op_threads)))


class Engine:
    def __init__(self, detectors: Sequence[Detector], *, media_limits: MediaLimits | None = None,
                 max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256, decode_workers: int = 2,
                 decode_limits: DecodeLimits | None = None, infer_workers: int = 0,
                 intra_op_threads: int = 1) -> None:
        """`infer_workers`: batches of one detector run at once; 0: for a detector on the CPU provider, the
        usable cores over its sessions' `intra_op_threads` (single-threaded as `from_packs` makes them),
        elsewhere one."""
        if not detectors:
            raise ValueError("an engine needs at least one detector")
        self.detectors = list(detectors)
        self.media_limits = media_limits or MediaLimits()
        self.target_size = max((d.input_size for d in self.detectors), key=lambda s: s[0] * s[1])
        self.decode_pool = DecodePool(decode_workers, decode_limits)
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(decode_workers, thread_name_prefix="prepare")
        workers = [infer_workers or _default_workers(d, intra_op_threads) for d in self.detectors]
        self._infer_pools = [concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix=f"infer-{d.name}")
                             for d, n in zip(self.detectors, workers, strict=True)]
        self.batchers: list[Batcher[Any, dict[str, float]]] = [
            Batcher(d.infer, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, executor=pool,
                    workers=n)
            for d, pool, n in zip(self.detectors, self._infer_pools, workers, strict=True)]
        self.packs = [{"name": d.pack_name, "version": d.pack_version, "kind": d.name, "provider": d.provider}
                      for d in self.detectors]

    @classmethod
    def from_packs(cls, paths: Sequence[str | Path], options: RuntimeOptions | None = None, **kwargs: Any) -> Engine:
        options = options or RuntimeOptions()
        if not options.intra_op_threads:  # parallel across batches instead (see the module's docstring)
            options = replace(options, intra_op_threads=1)
        kwargs.setdefault("intra_op_threads", options.intra_op_threads)
        return cls([load_detector(load_pack(path), options) for path in paths], **kwargs)

    @classmethod
    def from_config(cls, config: Any) -> Engine:
        """From an `[inference]` config section (proxy.config.InferenceConfig)."""
        options = RuntimeOptions(provider=config.provider, fp16=config.fp16,
                                 intra_op_threads=config.intra_op_threads, int8=config.int8,
                                 kserve=tuple(config.kserve))
        return cls.from_packs(config.packs, options, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                              max_queue=config.max_queue)

    @property
    def model_runs(self) -> int:
        return sum(b.stats.batches for b in self.batchers)

    @property
    def queued(self) -> int:
        return sum(b.queued for b in self.batchers)

    @property
    def decode_spec(self) -> DecodeSpec:
        """How this engine decodes: a caller that decodes the same bytes in its own decode-pool task anyway
        (the proxy's PDQ hashing) decodes for the engine in that task too and hands the frames to
        `screen_decoded`: one decode task per upload instead of two."""
        return DecodeSpec(self.media_limits, self.target_size)

    async def screen(self, data: bytes, content_type: str | None = None) -> ScreenResult:
        started = time.perf_counter()
        try:
            media = await self.decode_pool.run(decode, data, content_type, self.media_limits, self.target_size)
        except DecodeLimitExceeded as exc:
            media = Media(undecodable=True, reason=str(exc), over_budget=True)
        except DecodeBusy as exc:  # an overload, like a full batcher queue: the caller sees an outage
            raise QueueFull(f"decoding: {exc}") from exc
        return await self._screen_media(media, started)

    async def screen_decoded(self, media: Media) -> ScreenResult:
        """Screen frames decoded by `decode_spec.decode` in a decode-pool worker (never frames from elsewhere:
        the bounds are that decode's). Every frame is screened; undecodable media gives an undecodable result."""
        return await self._screen_media(media, time.perf_counter())

    async def _screen_media(self, media: Media, started: float) -> ScreenResult:
        prepared: list[list[Any]] = []
        if not media.undecodable and sum(f.width * f.height for f in media.frames) <= INLINE_PREPARE_PIXELS:
            prepared = self._prepare(media)  # a few tiny frames: less work than handing them to a thread
        elif not media.undecodable:
            prepared = await asyncio.get_running_loop().run_in_executor(self._prepare_pool, self._prepare, media)
        decoded = time.perf_counter()
        if media.undecodable:
            return ScreenResult({"undecodable": 1.0}, packs=self.packs, undecodable=True, reason=media.reason,
                                timings_ms={"decode": round((decoded - started) * 1000, 2), "infer": 0.0,
                                            "total": round((decoded - started) * 1000, 2)})
        per_detector: dict[str, dict[str, float]] = {}
        for detector, batcher, items in zip(self.detectors, self.batchers, prepared, strict=True):
            results = await asyncio.gather(*(batcher.submit(item) for item in items))
            per_detector[detector.name] = merge_frames(results)
        done = time.perf_counter()
        signals = merge_frames(list(per_detector.values()))
        signals["undecodable"] = 0.0
        signals["frames"] = float(len(media.frames))
        return ScreenResult(signals, per_detector, self.packs, frames=len(media.frames), timings_ms={
            "decode": round((decoded - started) * 1000, 2), "infer": round((done - decoded) * 1000, 2),
            "total": round((done - started) * 1000, 2)})

    def _prepare(self, media: Media) -> list[list[Any]]:
        """Each detector's per-frame preprocessing of frames already decoded (and bounded) in a worker thread."""
        return [[detector.prepare(frame) for frame in media.frames] for detector in self.detectors]

    async def close(self) -> None:
        for batcher in self.batchers:
            await batcher.close()
        self.decode_pool.close()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        for pool in self._infer_pools:
            pool.shutdown(wait=False, cancel_futures=True)

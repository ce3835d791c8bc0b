"""ONNX Runtime sessions: the provider chosen by config, and the provider that really runs, reported."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("bucketguard.inference")

Provider = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """`cuda` was required but ONNX Runtime is not running on the GPU."""


@dataclass(frozen=True)
class RuntimeOptions:
    provider: Provider = "cpu"
    fp16: bool = False
    #: 0: ONNX Runtime's default (one per core) for a lone session; the engine makes it 1 and runs one batch
    #: per core instead (inference.engine).
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    #: KServe v2 endpoints (Triton, MLServer, ...) that run the pack's graphs instead of a local session.
    kserve: tuple[str, ...] = ()
    #: Use a model's checksummed int8 variant (CPU) where the pack lists one.
    int8: bool = False

    def __post_init__(self) -> None:
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ValueError(f"provider must be 'auto', 'cpu' or 'cuda', not {self.provider!r}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be 0 (default) or positive")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def requested_providers(provider: Provider, available: list[str]) -> list[str]:
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def model_variant(path: Path, options: RuntimeOptions, cuda_requested: bool, fp16_path: Path | None) -> Path:
    """The pack's float16 variant when fp16 is asked for on CUDA and the pack lists one; else `path`.

    Only a variant named in the pack's manifest (so checksummed) is used, never a file guessed from the name.
    fp16 on the CPU provider is slower than fp32, so it is ignored there.
    """
    if options.fp16 and cuda_requested:
        if fp16_path is not None:
            return fp16_path
        log.warning("fp16 asked for but the pack has no fp16 variant of %s; running fp32 "
                    "(rebuild the pack with --fp16)", path.name)
    return path


def create_session(path: Path, options: RuntimeOptions, *, fp16_path: Path | None = None,
                   model_name: str | None = None, int8_path: Path | None = None) -> tuple[Any, str]:
    """An InferenceSession and the provider that really runs it (read back after creation); with
    `options.kserve`, a session whose runs go to those KServe v2 endpoints as model `model_name`."""
    if options.kserve:
        from inference.kserve import KServeSession

        return KServeSession(options.kserve, model_name or path.stem), "KServeV2"
    import onnxruntime as ort

    available = ort.get_available_providers()
    if options.provider == "cuda" and CUDA not in available:
        raise ProviderUnavailable(
            f"provider 'cuda' was required but this onnxruntime build offers only {', '.join(available)}; "
            "install the gpu extra (onnxruntime-gpu) on a machine with CUDA, or choose provider = 'cpu'")
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.intra_op_threads:
        settings.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads:
        settings.inter_op_num_threads = options.inter_op_threads
    settings.log_severity_level = 3
    # Busy-waiting worker threads would take the CPU from the decode threads running beside them.
    settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
    settings.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = requested_providers(options.provider, available)
    model = model_variant(path, options, CUDA in providers, fp16_path)
    if options.int8 and CUDA not in providers:
        if int8_path is not None:
            model = int8_path
        else:
            log.warning("int8 asked for but the pack has no int8 variant of %s; running fp32", path.name)
    session = ort.InferenceSession(str(model), sess_options=settings, providers=providers)
    active = session.get_providers()[0]
    if model == fp16_path and model != path and active != CUDA:  # fell back to the CPU: run fp32 there
        session = ort.InferenceSession(str(path), sess_options=settings, providers=[CPU])
        model, active = path, CPU
    if options.provider == "cuda" and active != CUDA:
        raise ProviderUnavailable(f"provider 'cuda' was required but ONNX Runtime fell back to {active} "
                                  f"for {path.name} (is CUDA/cuDNN installed and a GPU visible?)")
    log.info("model %s runs on %s", model.name, active)
    return session, active

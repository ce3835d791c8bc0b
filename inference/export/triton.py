"""`bucketguard model triton-repo PACK OUT`: a pack's ONNX graphs as an NVIDIA Triton model repository.

    OUT/<pack>-<role>/config.pbtxt      onnxruntime backend, dynamic batching, GPU instances, fp16 on the GPU
    OUT/<pack>-<role>/1/model.onnx      the pack's (checksummed) graph, copied

The model names are `Pack.model_name(role)`, which the KServe v2 sessions ask for. Only the graphs go to the
server: decoding, resizing, normalising and every post-processing step stay in bucketguard. With a pack built
with `--fp16`, its checksummed float16 variant is the model (float32 in and out); otherwise Triton's ONNX Runtime
backend is asked to run TensorRT in FP16 on the GPU.

`write_mlserver_repo` writes the same graphs for MLServer (any KServe v2 server will do) with a small
onnxruntime runtime (`inference/data/mlserver_onnx.py`, copied beside them; it runs inside MLServer, never in
bucketguard); the tests use it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from inference.packs import Pack, load_pack

_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
          onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
          onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL"}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]  # -1 for a dynamic axis; the batch axis is left out when batching


def _tensors(values, batched: bool) -> list[Tensor]:
    out = []
    for value in values:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        out.append(Tensor(value.name, _TYPES.get(kind.elem_type, "TYPE_FP32"), tuple(dims[1:] if batched else dims)))
    return out


def signature(model_path: Path) -> tuple[bool, list[Tensor], list[Tensor]]:
    """(dynamic batch axis?, inputs, outputs) of an ONNX graph, read without loading its weights."""
    model = onnx.load(str(model_path), load_external_data=False)
    initialisers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initialisers]
    first = [value.type.tensor_type.shape.dim[0] for value in [*inputs, *model.graph.output]
             if value.type.tensor_type.shape.dim]
    batched = bool(first) and all(not d.HasField("dim_value") for d in first)
    return batched, _tensors(inputs, batched), _tensors(model.graph.output, batched)


def _block(kind: str, tensors: list[Tensor]) -> str:
    entries = ",\n".join(f'  {{\n    name: "{t.name}"\n    data_type: {t.datatype}\n    dims: [ '
                         f'{", ".join(str(d) for d in t.dims)} ]\n  }}' for t in tensors)
    return f"{kind} [\n{entries}\n]\n"


def config_pbtxt(name: str, model_path: Path, *, max_batch: int, max_delay_us: int, gpu: bool,
                 tensorrt_fp16: bool) -> str:
    batched, inputs, outputs = signature(model_path)
    text = f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch if batched else 0}\n'
    text += _block("input", inputs) + _block("output", outputs)
    if batched:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_delay_us}\n}}\n"
    text += f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
    if gpu and tensorrt_fp16:
        text += ('optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n'
                 '      name : "tensorrt"\n      parameters { key: "precision_mode" value: "FP16" }\n    } ]\n  }\n}\n')
    return text


def write_triton_repo(pack_path: str | Path, out: str | Path, *, max_batch: int = 16, max_delay_us: int = 5000,
                      gpu: bool = True, fp16: bool = True) -> list[Path]:
    """One folder per model of the pack; returns the config files written."""
    pack = load_pack(pack_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role in pack.models:
        name = pack.model_name(role)
        variant = pack.fp16_path(role) if fp16 and gpu else None
        source = variant or pack.model_path(role)
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(source, folder / "1" / "model.onnx")
        config = folder / "config.pbtxt"
        config.write_text(config_pbtxt(name, source, max_batch=max_batch, max_delay_us=max_delay_us, gpu=gpu,
                                       tensorrt_fp16=fp16 and gpu and variant is None), encoding="utf-8")
        written.append(config)
    return written


def write_mlserver_repo(pack: Pack, out: Path) -> list[str]:
    """The pack's graphs for MLServer with the onnxruntime runtime beside them; returns the model names."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).parent.parent / "data" / "mlserver_onnx.py", out / "mlserver_onnx.py")
    names = []
    for role in pack.models:
        name = pack.model_name(role)
        folder = out / name
        folder.mkdir(exist_ok=True)
        shutil.copyfile(pack.model_path(role), folder / "model.onnx")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_onnx.OnnxModel",
            "parameters": {"uri": "./model.onnx"}}), encoding="utf-8")
        names.append(name)
    return names

"""An MLServer runtime that runs one ONNX graph with ONNX Runtime: enough to serve a pack over KServe v2.

Runs inside MLServer (its own environment: `pip install mlserver onnxruntime`), not inside bucketguard;
`inference.export.triton.write_mlserver_repo` copies it beside the models. It does no pre- or post-processing:
tensors in, tensors out, by name.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]
from mlserver.utils import get_model_uri  # type: ignore[import-not-found]


class OnnxModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(uri, sess_options=options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        names = [item.name for item in payload.outputs or []] or [o.name for o in self._session.get_outputs()]
        results = self._session.run(names, feeds)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(names, results, strict=True)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

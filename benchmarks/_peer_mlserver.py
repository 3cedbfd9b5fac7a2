"""MLServer custom runtime for ``bench_peers.py`` (runs in MLServer's own virtualenv).

``bench_peers.py`` copies this file as ``runtime.py`` next to ``_peer_models.py`` into
MLServer's model repository and points each model's ``model-settings.json`` at
``runtime.PeerRuntime`` with ``parameters.extra = {"workload": ..., "model_dir": ...}``
and adaptive batching (``max_batch_size: 64, max_batch_time: 0.002``): MLServer stacks
the single-row V2 requests it gathers into one ``[n, 784]`` input, and splits the
``[n, ...]`` output back per request.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

import _peer_models


class PeerRuntime(MLModel):
    """One of the four workloads, with the same weights as every other server."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self._predict = _peer_models.load(extra["workload"], extra["model_dir"])
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        x = np.asarray(x, dtype=np.float64).reshape(-1, _peer_models.FEATURES)
        y = np.asarray(self._predict(x))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", y)])

"""Client-side helpers for the gRPC and V2 tests: real stubs on real channels."""

from __future__ import annotations

import io

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from proto.diptych.v1 import diptych_pb2, diptych_pb2_grpc


def png_bytes(pixels: np.ndarray | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(np.squeeze(pixels)) if pixels is not None else Image.new("RGB", (40, 30), (90, 30, 200))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def startup_answers(server) -> dict[str, object]:
    """What the gRPC APIs say as soon as the server is live, while the models still load."""
    server.wait("/livez")  # BentoML answers once the startup hooks, which start gRPC, have run
    with grpc.insecure_channel(server.grpc_target) as channel:
        status = health(channel)
        try:
            diptych_pb2_grpc.DiptychStub(channel).Classify(diptych_pb2.ClassifyRequest(images=[png_bytes()]), timeout=5)
            classify = (grpc.StatusCode.OK, "")
        except grpc.RpcError as error:
            classify = (error.code(), error.details())
    return {"health": status, "classify": classify}

"""diptych over gRPC: its own API (diptych.v1), TF Serving's PredictionService and the Open
Inference Protocol, served from the BentoML worker beside HTTP (see `server`)."""

from .server import GrpcServer

__all__ = ["GrpcServer"]

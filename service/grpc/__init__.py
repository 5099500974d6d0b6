"""diptych over gRPC: its own API (diptych.v1), TF Serving's PredictionService and
ModelService, and the Open Inference Protocol, served from the BentoML worker beside HTTP
(`server.GrpcServer`). Nothing is imported here: the servicers load TensorFlow and the
generated protos, which a user of `gate` alone (or the bentoml supervisor) need not."""

"""The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`.

The data plane is `service.v2`, shared with the REST routes; this module only converts
messages. The model repository extension (index, load, unload) is Triton's. Inputs come as typed `contents` or as `raw_input_contents`; outputs always go
back as `raw_output_contents`, as Triton answers (tritonclient reads nothing else).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from proto.inference import grpc_predict_v2_pb2 as pb
from proto.inference import grpc_predict_v2_pb2_grpc

from .. import v2
from ..core import Engine, ValidationError

CONTENTS = {  # which InferTensorContents field holds each datatype's values
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.engine.alive)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=v2.model_ready(self.engine, request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        metadata = v2.model_metadata(self.engine, request.name, request.version)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return infer_response(await v2.infer(self.engine, infer_request(request)))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        index = v2.repository_index(self.engine, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        await v2.repository_load(self.engine, request.model_name, parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        await self.engine.unload_model(request.model_name, v2.repository_version(parameters(request.parameters)))
        return pb.RepositoryModelUnloadResponse()


def parameters(values: Mapping[str, pb.ModelRepositoryParameter]) -> dict[str, Any]:
    return {name: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for name, value in values.items()}


def infer_request(message: pb.ModelInferRequest) -> v2.Request:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ValidationError("raw_input_contents", f"has {len(raw)} entries for {len(message.inputs)} inputs")
    for i, tensor in enumerate(message.inputs):
        if raw and tensor.contents.ListFields():  # the protocol: one or the other, never both
            raise ValidationError(f"inputs[{i}].contents", "given with raw_input_contents: send the tensor data "
                                                           "in one of them only")
    inputs = {}
    for i, tensor in enumerate(message.inputs):
        data = raw[i] if raw else list(getattr(tensor.contents, CONTENTS.get(tensor.datatype, "bytes_contents")))
        inputs[tensor.name] = v2.tensor(f"inputs[{i}]", tensor.datatype, tensor.shape, data)
    outputs = [out.name for out in message.outputs]
    return v2.Request(message.model_name, message.model_version, message.id, inputs, outputs)


def infer_response(result: v2.Response) -> pb.ModelInferResponse:
    outputs = [pb.ModelInferResponse.InferOutputTensor(name=name, datatype=v2.datatype(array), shape=array.shape)
               for name, array in result.outputs.items()]
    return pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id, outputs=outputs,
                                 raw_output_contents=[v2.raw(array) for array in result.outputs.values()])

"""diptych.v1 (`proto/diptych/v1/diptych.proto`): the HTTP API's calls, typed.

The models calls are here; each registered kind adds its own methods (`Wire.grpc`, in its
wire module: Classify, Generate, ...), served under the same `diptych.v1.Diptych` service.
Each method converts the request, calls the `Engine` or the served model it hands out,
converts the result back; the `Gate` interceptor maps the core's errors, so the messages
are the HTTP API's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import grpc
from google.protobuf import json_format, struct_pb2

from proto.diptych.v1 import diptych_pb2 as pb

from ..core import Engine, ModelInfo, VersionStatus, validation

SERVICE = pb.DESCRIPTOR.services_by_name["Diptych"].full_name
MODEL_METHODS = ("ListModels", "LoadModel", "UnloadModel", "Feedback")


class DiptychServicer:
    """The models calls: what is loaded, the privileged load and unload, and labels fed back."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def ListModels(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            model_entry(version) for model in self.engine.status().values() for version in model.versions.values()])

    async def LoadModel(self, request: pb.LoadModelRequest) -> pb.LoadModelResponse:
        await self.engine.load_model(request.name, version_of(request))
        return pb.LoadModelResponse()

    async def UnloadModel(self, request: pb.UnloadModelRequest) -> pb.UnloadModelResponse:
        await self.engine.unload_model(request.name, version_of(request))
        return pb.UnloadModelResponse()


    async def Feedback(self, request: pb.FeedbackRequest) -> pb.FeedbackResponse:
        labelled = await self.engine.feed_back([
            (item.request_id, getattr(item, item.WhichOneof("label") or "label_name"), item.index)
            for item in request.items])
        return pb.FeedbackResponse(results=[pb.FeedbackResult(
            request_id=each.request_id, index=each.index, status=each.error.reason if each.error else "ok",
            error=str(each.error) if each.error else "", replaced=each.replaced) for each in labelled])


def handlers(engine: Engine, kinds: Iterable[type]) -> grpc.GenericRpcHandler:
    """diptych.v1.Diptych: the models calls, and every registered kind's methods. A kind's method
    may not take a name already served (it would replace ListModels, or another kind's method)."""
    from ..kinds.wire import wire_of

    servicer = DiptychServicer(engine)
    methods = {name: unary(getattr(servicer, name), getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response"))
               for name in MODEL_METHODS}
    owners = dict.fromkeys(MODEL_METHODS, "the models calls")
    for kind in kinds:
        for method in wire_of(kind).grpc:
            if method.name in owners:
                raise ValueError(f"the gRPC method {SERVICE}/{method.name} of kind {kind.kind!r} is already "
                                 f"served, by {owners[method.name]}: a method has one name")
            owners[method.name] = f"kind {kind.kind!r}"
            methods[method.name] = unary(functools.partial(method.handler, engine), method.request, method.response)
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def unary(call: Callable, request: type, response: type) -> grpc.RpcMethodHandler:
    """`call(message)` as a unary method (the Gate interceptor wraps it like any other)."""

    async def method(message, context: grpc.aio.ServicerContext):
        return await call(message)

    return grpc.unary_unary_rpc_method_handler(method, request_deserializer=request.FromString,
                                               response_serializer=response.SerializeToString)


def version_of(request: pb.LoadModelRequest | pb.UnloadModelRequest) -> int | None:
    """The version a load or unload names (int64 on the wire: a negative one is refused), or None."""
    return validation.requested_version(request.version, "version") if request.HasField("version") else None


def model_ref(info: ModelInfo) -> pb.ModelRef:
    return pb.ModelRef(name=info.name, version=info.version)


def model_entry(status: VersionStatus) -> pb.Model:
    """One version as ListModels reports it; its card and runtime while it is loaded."""
    info = status.info
    card = json_format.ParseDict(info.card.to_dict(), struct_pb2.Struct()) if info else None
    return pb.Model(name=status.name, version=str(status.version), kind=status.kind or "", source=status.source,
                    card=card, state=status.state.value, reason=status.reason, runtime=info.runtime if info else "",
                    labels=status.labels)

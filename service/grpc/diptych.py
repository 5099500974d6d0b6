"""diptych.v1 (`proto/diptych/v1/diptych.proto`): the HTTP API's calls, typed.

Each method converts the request, calls the `Engine` or the served model it hands out,
converts the result back; the `Gate` interceptor maps the core's errors, so the messages
are the HTTP API's.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format, struct_pb2

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc

from ..core import Engine, ModelInfo, ValidationError, VersionStatus, validation
from ..core.images import encode_png, tile
from ..kinds import Classification, Classifier, Generation, Generator

FORMATS = frozenset(pb.Format.values())


class DiptychServicer(diptych_pb2_grpc.DiptychServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        top_k = request.top_k if request.HasField("top_k") else 5
        classifier = self.engine.get(Classifier, request.model or None)
        return classified(await classifier.classify(list(request.images), top_k))

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        if request.format not in FORMATS:  # proto3 keeps an unknown enum value: refuse it, not PNG
            raise ValidationError("format", f"unknown format {request.format}: use FORMAT_PNG or FORMAT_GRID")
        generator = self.engine.get(Generator, request.model or None)
        return generated(await generator.generate(*generation_arguments(request)), request.format)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            model_entry(version) for model in self.engine.status().values() for version in model.versions.values()])

    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.LoadModelResponse:
        await self.engine.load_model(request.name, version_of(request))
        return pb.LoadModelResponse()

    async def UnloadModel(self, request: pb.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        await self.engine.unload_model(request.name, version_of(request))
        return pb.UnloadModelResponse()


def version_of(request: pb.LoadModelRequest | pb.UnloadModelRequest) -> int | None:
    """The version a load or unload names (int64 on the wire: a negative one is refused), or None."""
    return validation.requested_version(request.version, "version") if request.HasField("version") else None


def generation_arguments(request: pb.GenerateRequest) -> tuple:
    """(count, seed, class, latents, psi) as `Generator.generate` takes them; absent fields are None."""
    present = request.WhichOneof("class")
    return (
        request.count if request.HasField("count") else None,
        request.seed if request.HasField("seed") else None,
        getattr(request, present) if present else None,
        [list(latent.values) for latent in request.latents] or None,
        request.psi if request.HasField("psi") else None,
    )


def classified(result: Classification) -> pb.ClassifyResponse:
    predictions = [pb.Prediction(labels=[pb.Label(label=label, score=score) for label, score in row])
                   for row in result.predictions]
    return pb.ClassifyResponse(model=model_ref(result.model), predictions=predictions)


def generated(result: Generation, form: pb.Format) -> pb.GenerateResponse:
    grid = form == pb.FORMAT_GRID
    images = [
        pb.GeneratedImage(png=b"" if grid else encode_png(image), class_id=int(class_id), class_name=name or "",
                          latent=pb.Latent(values=latent))
        for image, class_id, name, latent in zip(result.images, result.class_ids, result.class_names, result.latents)
    ]
    return pb.GenerateResponse(model=model_ref(result.model), seed=result.seed, images=images,
                               grid=encode_png(tile(result.images)) if grid else b"")


def model_ref(info: ModelInfo) -> pb.ModelRef:
    return pb.ModelRef(name=info.name, version=info.version)


def model_entry(status: VersionStatus) -> pb.Model:
    """One version as ListModels reports it; its card and runtime while it is loaded."""
    info = status.info
    card = json_format.ParseDict(info.card.to_dict(), struct_pb2.Struct()) if info else None
    return pb.Model(name=status.name, version=str(status.version), kind=status.kind or "", source=status.source,
                    card=card, state=status.state.value, reason=status.reason, runtime=info.runtime if info else "",
                    labels=status.labels)

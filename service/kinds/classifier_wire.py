"""The classifier on the wire: POST /classify, diptych.v1 Classify, `python -m service.batch
classify`, and its playground panel. Each decodes its request, calls the `Classifier` the
engine hands it (`Classifier.classify`), and encodes the top-k labels."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from proto.diptych.v1 import diptych_pb2 as pb
from service.batch.jobs import Classify
from service.grpc.diptych import model_ref as grpc_model_ref
from service.http import api, schemas
from service.http.endpoints import BINARY, INFERENCE_ERRORS, Endpoint, Operation
from service.http.errors import errors

from .classifier import TOP_K, Classification, Classifier
from .wire import GrpcMethod, Panel, Wire

MULTIPART_CLASSIFY = {
    "type": "object",
    "required": ["images"],
    "properties": {"images": {"type": "array", "items": BINARY}, "top_k": {"type": "integer", "default": TOP_K},
                   "abstain_below": {"type": "number"}},
}


@errors
async def classify(request: Request) -> Response:
    body = await schemas.ClassifyRequest.parse(request)
    classifier = api.engine().get(Classifier, api.model_of(request, body.model))
    return classified(await classifier.classify(body.images, body.top_k, body.abstain_below))


def classified(result: Classification) -> Response:
    predictions = [[schemas.Label(label=label, score=score) for label, score in row] for row in result.predictions]
    return api.json_response(schemas.ClassifyResponse(model=api.model_ref(result.model), predictions=predictions,
                                                      abstain=result.abstain), result.model)


async def classify_grpc(engine, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
    classifier = engine.get(Classifier, request.model or None)
    result = await classifier.classify(list(request.images), request.top_k if request.HasField("top_k") else TOP_K,
                                       request.abstain_below if request.HasField("abstain_below") else None)
    predictions = [pb.Prediction(labels=[pb.Label(label=label, score=score) for label, score in row], abstain=abstain)
                   for row, abstain in zip(result.predictions, result.abstain)]
    return pb.ClassifyResponse(model=grpc_model_ref(result.model), predictions=predictions)


PANELS = Path(__file__).with_name("panels")

WIRE = Wire(
    routes=(Endpoint("POST", "/classify", classify, doc=Operation(
        "Top-k labels for each image (JSON with base64 images, or multipart files in `images`).",
        ok={"application/json": schemas.ClassifyResponse}, errors=INFERENCE_ERRORS, client_name="classify",
        body={"application/json": schemas.ClassifyRequest, "multipart/form-data": MULTIPART_CLASSIFY})),),
    grpc=(GrpcMethod("Classify", pb.ClassifyRequest, pb.ClassifyResponse, classify_grpc),),
    jobs=(Classify,),
    panel=Panel.files(PANELS / "classifier.html", PANELS / "classifier.js"),
)

"""A test kind, registered by one line (`kind_modules = ["tests.kinds.embedder"]`): images
in, one embedding vector out. It proves that a kind with its own HTTP route, diptych.v1
method, bulk job and playground panel is this module, its tests and its proto messages
(`embedder.proto`), with nothing else changed; the shipped service does not register it.

Its card: the shared image fields, and `kind_fields = {"dim": D}`, which the kind checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from contract.card import CardError, ModelCard
from service.batch.jobs import Classify, Row, _result
from service.core import image_input
from service.core.models import ModelInfo, ServedModel
from service.grpc.diptych import model_ref as grpc_model_ref
from service.http import api, schemas
from service.http.endpoints import INFERENCE_ERRORS, Endpoint, Operation
from service.http.errors import errors
from service.kinds.wire import GrpcMethod, Panel, Wire
from tests.kinds import embedder_pb2 as pb


class Embedder(ServedModel):
    kind = "embedder"
    card_fields = ("image_size", "channels", "kind_fields")
    wire = __name__

    @classmethod
    def check_card(cls, card: ModelCard) -> None:
        super().check_card(card)
        dim = card.kind_fields.get("dim")
        if not (isinstance(dim, int) and 1 <= dim <= 65_536) or set(card.kind_fields) != {"dim"}:
            raise CardError(f"the embedder card of {card.name}:{card.version}: kind_fields must be "
                            f'{{"dim": 1 to 65536}}, got {card.kind_fields}')

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_size = self.info.card.image_size[0]
        self.dim: int = self.info.card.kind_fields["dim"]

    async def embed(self, images: Sequence[bytes]) -> tuple[ModelInfo, np.ndarray]:
        return self.info, np.stack(await self.infer(self.checked(images)))

    def checked(self, images: Sequence[image_input.Image]) -> list[tuple[image_input.Image, str]]:
        return image_input.checked(images, self.settings)

    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"images": np.zeros((size, self.image_size, self.image_size, 3), np.uint8)}

    def run_batch(self, items: list) -> list:
        return image_input.run_good(image_input.pixels(items, self.image_size),
                                    lambda pixels: self.run({"images": pixels})["embedding"])


# -- its wire --------------------------------------------------------------------------------


class EmbedRequest(schemas.Body):
    images: list[schemas.Base64]
    model: schemas.ModelName = None


class EmbedResponse(schemas.pydantic.BaseModel):
    model: schemas.ModelRef
    embeddings: list[list[float]]


@errors
async def embed(request: Request) -> Response:
    body = await EmbedRequest.parse(request)
    info, vectors = await api.engine().get(Embedder, api.model_of(request, body.model)).embed(body.images)
    return api.json_response(EmbedResponse(model=api.model_ref(info), embeddings=vectors.tolist()), info)


async def embed_grpc(engine, request: pb.EmbedRequest) -> pb.EmbedResponse:
    info, vectors = await engine.get(Embedder, request.model or None).embed(list(request.images))
    return pb.EmbedResponse(model=grpc_model_ref(info), embeddings=[pb.Embedding(values=row) for row in vectors])


class Embed(Classify):
    """`python -m service.batch embed SOURCE --out FILE`: a row per file, its embedding or error."""

    kind: ClassVar[type[ServedModel]] = Embedder
    command: ClassVar[str] = "embed"
    help: ClassVar[str] = "embed every image SOURCE names"

    @staticmethod
    def arguments(command) -> None:
        command.add_argument("source", metavar="SOURCE")
        command.add_argument("--out", required=True, type=Path)

    @classmethod
    def of(cls, args, shard) -> Embed:
        return cls(args.out, shard, source=args.source)

    def spec(self, model: Embedder) -> dict[str, Any]:
        return {"job": "embed", "source": self.source, **self.model_spec(model)}

    def check(self, model: Embedder) -> None:
        pass  # no top_k

    def finish(self, model: Embedder, started: list) -> list[Row]:
        identity = {"model": model.info.name, "version": model.info.version}
        rows = []
        for path, pending in started:
            result = pending if isinstance(pending, str) else _result(pending, model.settings.timeout_s)
            failed = isinstance(result, str)
            rows.append({"path": path, "embedding": None if failed else [float(v) for v in result],
                         "error": result if failed else None} | identity)
        return rows


PANEL = Panel(
    html="""    <section id="embed">
      <h2>Embed</h2>
      <label>Model <select id="embedder" data-kind="embedder"></select></label>
      <input id="embed-image" type="file" accept="image/*">
      <output id="embedding"></output>
      <p class="error" role="alert"></p>
    </section>
""",
    script="""// The embedder's panel: an image's embedding (POST /embed).
"use strict";
$("#embed-image").addEventListener("change", (event) => guarded($("#embed"), async () => {
  const result = await api("/embed", {images: [await readBase64(event.target.files[0])],
                                      model: $("#embedder").value || undefined});
  $("#embedding").value = result.embeddings[0].map((value) => value.toFixed(3)).join(", ");
}));
""")

WIRE = Wire(
    routes=(Endpoint("POST", "/embed", embed, doc=Operation(
        "One embedding vector per image (JSON with base64 images).", ok={"application/json": EmbedResponse},
        errors=INFERENCE_ERRORS, client_name="embed", body={"application/json": EmbedRequest})),),
    grpc=(GrpcMethod("Embed", pb.EmbedRequest, pb.EmbedResponse, embed_grpc),),
    jobs=(Embed,),
    panel=PANEL,
)

KIND = Embedder  # what `kind_modules` registers

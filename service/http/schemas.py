"""The HTTP API's bodies as pydantic models: what a request is parsed into, what a JSON
response is written from, and (through `openapi`) the OpenAPI document's schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..core import ValidationError
from ..core.feedback import MAX_ITEMS
from ..core.validation import decimal
from ..kinds.classifier import TOP_K

# Written out where pydantic's schema would be `anyOf` or lack the format OpenAPI 3.0 knows.
Base64 = Annotated[bytes, WithJsonSchema({"type": "string", "format": "byte"})]
Seed = Annotated[int, Field(description="0 to 2**32-1; the same seed gives the same images")]
ClassName = Annotated[int | str, WithJsonSchema({"oneOf": [{"type": "integer"}, {"type": "string"}]})]
Class = Annotated[ClassName | None, Field(alias="class", description="a class name, or its id (int or digit string)")]
LatentRows = Annotated[list[list[float]], Field(description="one row of latent_dim finite numbers per image")]
ModelName = Annotated[str | None, Field(description="name, name:version or name@label (or the query parameter "
                                                    "`model`); absent: the default model of the kind")]
Psi = Annotated[float | None, Field(description="truncation of latents drawn from a seed, in (0, 1]: lower is more "
                                                "typical and less varied; absent: the model card's default")]


class Body(pydantic.BaseModel):
    """A strict JSON body: exact types, no unknown fields, never empty."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, val_json_bytes="base64")

    @classmethod
    async def parse(cls, request: Request) -> Body:
        """The request's body as this model, or a pydantic.ValidationError naming the field."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await cls.from_form(request)
        body = await request.body()
        if not body.strip():
            raise parse_error(cls, "body", "empty_body", "the request body is empty: send a JSON object")
        return cls.model_validate_json(body)

    @classmethod
    async def from_form(cls, request: Request) -> Body:
        raise parse_error(cls, "body", "unsupported_media_type", "send application/json")


class ClassifyRequest(Body):
    """JSON form; the same fields also come as multipart/form-data (files in `images`)."""

    images: list[Base64] = Field(description="base64-encoded image files (JPEG, PNG, GIF, BMP, WebP, TIFF, ...)")
    top_k: int = Field(TOP_K, description="labels per image, best first")
    abstain_below: float | None = Field(None, description="a top score under this (0 to 1) answers abstain: true, "
                                                          "its labels still listed; absent: the model table's, if any")
    model: ModelName = None

    @classmethod
    async def from_form(cls, request: Request) -> ClassifyRequest:
        try:
            form = await request.form(max_files=1024, max_fields=16)
        except Exception as error:  # python-multipart's and Starlette's parse errors
            raise parse_error(cls, "body", "multipart_invalid", f"malformed multipart body: {error}") from None
        images: list[bytes] = []
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "images" and isinstance(value, UploadFile):
                images.append(await value.read())
            elif name == "images":
                raise parse_error(cls, "images", "file_expected", "each `images` part must be a file upload")
            elif name == "top_k" and isinstance(value, str) and (number := decimal(value)) is not None:
                fields["top_k"] = number
            elif name == "abstain_below" and isinstance(value, str):
                fields["abstain_below"] = number_or_text(value)
            elif name == "model" and isinstance(value, str):
                fields["model"] = value
            else:
                fields[name] = value  # pydantic names the problem: unknown field or wrong type
        return cls.model_validate({"images": images, **fields})


class GenerateRequest(Body):
    count: int | None = Field(None, description="number of images (default 1, or the number of latents)")
    seed: Seed | None = Field(None, description="draw the latents from this seed (random when neither is given)")
    class_: Class = None
    latents: LatentRows | None = Field(None, description="explicit latents instead of a seed")
    psi: Psi = None
    model: ModelName = None
    format: Literal["png", "grid", "json"] = Field(
        "png", description="png: one image/png (count 1); grid: one PNG of all images; json: base64 PNGs + latents"
    )

    def check_format(self) -> None:
        """Refuse before generating what the format cannot return."""
        wanted = len(self.latents) if self.latents is not None else self.count or 1
        if self.format == "png" and wanted > 1:
            raise ValidationError("format", "png returns one image: use grid or json for more")


class InterpolateRequest(Body):
    seeds: list[Seed] | None = Field(None, description="two seeds: the end points")
    latents: LatentRows | None = Field(None, description="two latents: the end points (instead of seeds)")
    steps: int = Field(8, description="images in the strip, end points included")
    class_: Class = None
    psi: Psi = None
    model: ModelName = None


class FeedbackItem(Body):
    request_id: str = Field(description="the x-request-id header of the answer being labelled")
    label: ClassName = Field(description="the true label: its name, or its class index")
    index: int = Field(0, description="which image of that request (0: the first)")


class FeedbackRequest(Body):
    # No maxItems in the schema: more than the limit is a 413 (a limit, as for /classify's images),
    # which a schema's maxItems would make a 400. The route's 1-MiB body cap bounds the parse.
    items: list[FeedbackItem] = Field(description=f"one label per answered image; at most {MAX_ITEMS} per call")


class FeedbackResult(pydantic.BaseModel):
    request_id: str
    index: int
    status: str = Field(description="ok, or the item's error: not_found (an unknown or expired id), invalid_input")
    code: int = Field(description="the item's HTTP-style status: 200, 404 or 400")
    error: str | None = Field(None, description="what was wrong with the item")
    replaced: bool = Field(False, description="it corrected an earlier label of the same answer")


class FeedbackResponse(pydantic.BaseModel):
    items: list[FeedbackResult] = Field(description="one per item, in request order")


def number_or_text(value: str) -> float | str:
    """A form field as a float when it spells one, else as sent (pydantic then names the problem)."""
    try:
        return float(value)
    except ValueError:
        return value


def parse_error(model: type, field: str, kind: str, message: str) -> pydantic.ValidationError:
    return pydantic.ValidationError.from_exception_data(
        model.__name__, [InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=None)]
    )


class ModelRef(pydantic.BaseModel):
    name: str
    version: str
    runtime: str = Field(description="what runs the model: litert or tensorflow")


class Label(pydantic.BaseModel):
    label: str
    score: float


class ClassifyResponse(pydantic.BaseModel):
    model: ModelRef
    predictions: list[list[Label]] = Field(description="per image, in request order: top_k labels, best first")
    abstain: list[bool] = Field(description="per image, in request order: true when its top score is under the "
                                            "abstain_below that applied (the request's or the model's)")


class GeneratedImage(pydantic.BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    png: str = Field(description="base64 PNG (standard alphabet, padded)")
    class_id: int
    class_: str | None = Field(alias="class", serialization_alias="class")
    latent: list[float]


class GenerateResponse(pydantic.BaseModel):
    model: ModelRef
    seed: int | None = Field(description="the seed the latents were drawn from (null when latents were given)")
    images: list[GeneratedImage]


# -- the Open Inference Protocol's REST request (its answers are written by `v2rest`) ----------


class V2Tensor(pydantic.BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = {}
    data: Any = None  # row-major values, flat or nested; absent when sent as binary data


class V2Output(pydantic.BaseModel):
    name: str
    parameters: dict[str, Any] = {}


class V2InferRequest(pydantic.BaseModel):
    id: str = ""
    parameters: dict[str, Any] = {}
    inputs: list[V2Tensor]
    outputs: list[V2Output] = []

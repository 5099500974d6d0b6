"""HTTP and gRPC behind one interface: `classify` and `generate` give an `Answer`, whichever
protocol carried them, so the load generator and the checks never look at the wire."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from typing import Any

import httpx

SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
                 "DEADLINE_EXCEEDED"}


@dataclasses.dataclass
class Answer:
    """A response, normalised across protocols: `code` is 200 / the HTTP status / a gRPC code name."""

    code: int | str
    message: str = ""
    predictions: list[list[tuple[str, float]]] | None = None
    pngs: list[bytes] | None = None
    class_ids: list[int] | None = None
    seed: int | None = None
    runtime: str | None = None

    @property
    def ok(self) -> bool:
        return self.code in (200, "OK")

    @property
    def server_error(self) -> bool:
        return (isinstance(self.code, int) and self.code >= 500) or self.code in SERVER_ERRORS


class Lost(Exception):
    """No answer within the timeout."""


class HttpTarget:
    def __init__(self, url: str, concurrency: int, timeout: float) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)

    async def post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(route, content=json.dumps(body),
                                          headers={"content-type": "application/json"})
        except httpx.TimeoutException as error:
            raise Lost(str(error)) from None

    @staticmethod
    def error(response: httpx.Response) -> Answer:
        try:
            body = response.json()
            body = body[0] if isinstance(body, list) and body else body  # BentoML's own errors: a list
            message = body.get("error", "") if isinstance(body, dict) else ""
        except ValueError:
            message = ""
        return Answer(response.status_code, str(message) or response.text[:200])

    async def classify(self, images: list[bytes], top_k: int | None, raw: list[str] | None = None) -> Answer:
        body: dict[str, Any] = {"images": raw if raw is not None else [base64.b64encode(i).decode() for i in images]}
        if top_k is not None:
            body["top_k"] = top_k
        response = await self.post("/classify", body)
        if response.status_code != 200:
            return self.error(response)
        data = response.json()
        return Answer(200, predictions=[[(p["label"], p["score"]) for p in row] for row in data["predictions"]],
                      runtime=data.get("model", {}).get("runtime"))

    async def generate(self, seed: int, count: int, class_: str | None) -> Answer:
        body: dict[str, Any] = {"seed": seed, "count": count, "format": "png" if count == 1 else "json"}
        if class_ is not None:
            body["class"] = class_
        response = await self.post("/generate", body)
        if response.status_code != 200:
            return self.error(response)
        runtime = response.headers.get("x-model-runtime")
        if count == 1:  # one image/png, the seed in a header
            if response.headers.get("content-type") != "image/png":
                return Answer(200, message=f"content-type {response.headers.get('content-type')}", pngs=[])
            return Answer(200, pngs=[response.content], seed=int(response.headers.get("x-seed", -1)), runtime=runtime)
        data = response.json()
        return Answer(200, pngs=[base64.b64decode(i["png"]) for i in data["images"]],
                      class_ids=[i["class_id"] for i in data["images"]], seed=data["seed"], runtime=runtime)

    async def close(self) -> None:
        await self.client.aclose()


class GrpcTarget:
    def __init__(self, target: str, concurrency: int, timeout: float) -> None:
        import grpc

        from proto.diptych.v1 import diptych_pb2, diptych_pb2_grpc

        self.grpc, self.pb, self.timeout = grpc, diptych_pb2, timeout
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 2**20)])
        self.stub = diptych_pb2_grpc.DiptychStub(self.channel)

    async def call(self, method: Any, request: Any) -> Any:
        began = time.perf_counter()
        try:
            return await method(request, timeout=self.timeout)
        except self.grpc.aio.AioRpcError as error:
            if error.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED and time.perf_counter() - began >= self.timeout:
                raise Lost(error.details()) from None
            return Answer(error.code().name, error.details() or "")

    async def classify(self, images: list[bytes], top_k: int | None, raw: list[str] | None = None) -> Answer:
        request = self.pb.ClassifyRequest(images=images)
        if top_k is not None:
            request.top_k = top_k
        reply = await self.call(self.stub.Classify, request)
        if isinstance(reply, Answer):
            return reply
        return Answer("OK", predictions=[[(label.label, label.score) for label in p.labels] for p in reply.predictions])

    async def generate(self, seed: int, count: int, class_: str | None) -> Answer:
        request = self.pb.GenerateRequest(seed=seed, count=count)
        if class_ is not None:
            request.class_name = class_
        reply = await self.call(self.stub.Generate, request)
        if isinstance(reply, Answer):
            return reply
        return Answer("OK", pngs=[i.png for i in reply.images], class_ids=[i.class_id for i in reply.images],
                      seed=reply.seed if reply.HasField("seed") else None)

    async def close(self) -> None:
        await self.channel.close()

"""A third kind with a wire of its own (tests/kinds/embedder.py), registered by one setting
(`kind_modules`), goes through every adapter: its HTTP route on a real `bentoml serve`, its
diptych.v1 method, its bulk job and its playground panel; and on LiteRT, verified by its own
check (`ServedModel.conversion_check`), not a classifier's top-1."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contract.card import ModelCard
from contract.layout import new_version_folder
from contract.litert import convert_and_verify, save_calibration
from tests.conftest import ROOT, repository_server
from tests.kinds import embedder_pb2

SIZE = 4


class EmbedModule(tf.Module):
    """RGB means → 6 numbers: tanh of each, and the same again as 2σ(2x) − 1. TensorFlow and
    LiteRT round the two forms differently, so in about half the rows the larger of a pair
    swaps while every number agrees to 1e-6: a top-1 check would refuse the conversion."""

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images")])
    def embed(self, images):
        x = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2]) / 64 - 2
        return {"embedding": tf.concat([tf.tanh(x), 2 * tf.sigmoid(2 * x) - 1], axis=1)}


def expected(colour: tuple[int, int, int]) -> list[float]:
    x = np.array(colour, np.float64) / 64 - 2
    return np.concatenate([np.tanh(x), np.tanh(x)]).tolist()


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embedder_model(tmp_path_factory):
    with new_version_folder(tmp_path_factory.mktemp("embedder")) as (folder, version):
        module = EmbedModule()
        tf.saved_model.save(module, str(folder), signatures={"serving_default": module.embed})
        save_calibration(folder, {"images": np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), np.uint8)})
        card = ModelCard.new(kind="embedder", name="embedder", version=version, image_size=(SIZE, SIZE), channels=3,
                             numeric_signature="serving_default", tolerance=1e-4, kind_fields={"dim": 6})
        card.write(folder)
        kind_blind = convert_and_verify(folder, card, interpreters=1).report  # judged by the strictest check
        assert kind_blind["top1_agreement"] < 1 and kind_blind["max_difference"] <= 1e-6, kind_blind
    return folder.parent / str(version)


@pytest.fixture(scope="module")
def settings(embedder_model) -> dict[str, str]:
    """The one registration line, and the kind's table (no classifier or generator here)."""
    return {"kind_modules": "tests.kinds.embedder", "classifier": "", "generator": "",
            "kinds": json.dumps({"embedder": {"default": str(embedder_model), "runtime": "litert"}})}


def test_the_embedder_is_served_over_http_grpc_and_the_playground(settings, tmp_path_factory):
    with repository_server(tmp_path_factory, "embedder", **settings) as server:
        red, blue = (200, 10, 0), (0, 40, 250)
        answer = server.client.post("/embed", json={"images": [base64.b64encode(png(c)).decode()
                                                               for c in (red, blue)]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == {"name": "embedder", "version": "1", "runtime": "litert"}
        (listed,) = server.client.get("/models").json()["models"]
        assert listed["litert"]["verified"] and listed["litert"]["check"] == "tolerance", listed["litert"]
        np.testing.assert_allclose(answer.json()["embeddings"], [expected(red), expected(blue)], atol=1e-3)
        refused = server.client.post("/embed", json={"images": [], "extra": 1})
        assert refused.status_code == 400 and refused.json()["detail"][0]["loc"] == ["extra"]

        with grpc.insecure_channel(server.grpc_target) as channel:
            call = channel.unary_unary("/diptych.v1.Diptych/Embed",
                                       request_serializer=embedder_pb2.EmbedRequest.SerializeToString,
                                       response_deserializer=embedder_pb2.EmbedResponse.FromString)
            reply = call(embedder_pb2.EmbedRequest(images=[png(blue)]), timeout=60)
            assert reply.model.name == "embedder"
            np.testing.assert_allclose(list(reply.embeddings[0].values), expected(blue), atol=1e-3)
            with pytest.raises(grpc.RpcError) as empty:
                call(embedder_pb2.EmbedRequest(), timeout=60)
            assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        page = server.client.get("/ui").text
        assert 'data-kind="embedder"' in page and '<section id="embed">' in page
        scripts = [server.client.get(f"/ui/panels/{n}.js") for n in range(page.count("/ui/panels/"))]
        assert any('api("/embed"' in script.text for script in scripts)
        assert "/embed" in server.client.get("/docs.json").json()["paths"]


def test_the_embedder_bulk_job(settings, embedder_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "red.png").write_bytes(png((200, 10, 0)))
    (photos / "broken.png").write_bytes(b"not an image")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
    env.update({f"DIPTYCH_{key.upper()}": value for key, value in settings.items()}, DIPTYCH_STORE="false",
               BENTOML_HOME=str(tmp_path / "home"), TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "embeddings.jsonl"
    run = subprocess.run([sys.executable, "-m", "service.batch", "embed", str(photos), "--out", str(out),
                          "--no-progress", "--interpreters", "1"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {os.path.basename(row["path"]): row for row in map(json.loads, out.read_text().splitlines())}
    np.testing.assert_allclose(rows["red.png"]["embedding"], expected((200, 10, 0)), atol=1e-3)
    assert rows["broken.png"]["embedding"] is None and rows["broken.png"]["error"]

"""Object storage as a model source, in-process, against a real S3 endpoint on loopback
(moto's server, tests/object_store.py): URLs are never folders and bad ones are refused with
the reason, only complete versions are listed, a version is fetched into the cache and loaded
beside the old one, and the cache's bound evicts the least recently used version not served,
or fails the fetch (the old version serving) when it cannot."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import prometheus_client
import pytest

from contract.layout import is_folder_ref, is_location, resolve
from service.batch.models import ModelArgumentError, parse
from service.core import Conflict, Engine, Forbidden, Settings, ValidationError
from service.core.repository import ModelConfig, Repository
from service.core.sources import Cache, ObjectSource, Sources, objects, trusted
from service.kinds import KINDS, Classifier
from tests.conftest import eventually
from tests.test_repository import FAST, classify, engine_for, png, repository, versions  # noqa: F401

BAD = {"ftp://bucket/models": "ftp:// is not a model source", "S3://bucket/models": "S3:// is not a model source",
       "s3://": "is not a bucket name", "s3://B/models": "is not a bucket name",
       "s3://bucket/../etc": "no empty, '.' or '..' part", "s3://bucket//models": "no empty",
       "s3://bucket/models?versionId=1": "query or fragment"}


def test_a_url_is_never_a_folder(tmp_path):
    (tmp_path / "s3:").mkdir()  # even where a folder of that name exists
    assert not is_folder_ref("s3://bucket/models") and is_location("s3://bucket/models")
    assert is_folder_ref("models/shoes") and is_location("models/shoes") and not is_location("shoes:3")
    with pytest.raises(FileNotFoundError, match="a URL, not a folder"):
        resolve("s3://bucket/models/shoes/1")


@pytest.mark.parametrize("url", BAD)
def test_a_bad_url_is_refused_with_the_reason_wherever_a_model_is_named(url):
    for setting in ("model_root", "classifier", "generator"):
        with pytest.raises(ValueError, match=f"setting {setting}: .*{BAD[url]}"):
            Settings(**{setting: url})
    with pytest.raises(ValueError, match=f"repository.shoes.path: .*{BAD[url]}"):
        ModelConfig.parse("shoes", {"path": url})
    with pytest.raises(ModelArgumentError, match=BAD[url].replace("?", r"\?")):
        parse(url)


def test_gs_routes_to_gcsfs_or_says_to_install_it():
    """gcsfs cannot be tried against a real endpoint here (docs/architecture.md): the scheme is
    recognised, and without the package the error names it."""
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(ValueError, match=r"gs:// needs the gcsfs package, which is not installed: pip install"):
            Settings(model_root="gs://bucket/models")
    else:
        assert Settings(model_root="gs://bucket/models").model_root == "gs://bucket/models"


def test_a_load_request_may_name_a_url_under_a_root_only():
    roots = ["s3://bucket/models", "models"]
    assert trusted("s3://bucket/models/shoes", roots, [])
    assert not trusted("s3://bucket/models-other/shoes", roots, [])  # a prefix of the name is not a folder
    assert not trusted("s3://other-bucket/models/shoes", roots, [])
    assert trusted("s3://other-bucket/shoes/", roots, ["s3://other-bucket/shoes"])  # what is configured now
    assert not trusted("s3://bucket/x", ["s3://bucket/x-y"], []) and not trusted("models", ["s3://bucket"], [])


@pytest.fixture
def aws(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


def put(s3, key: str, body: bytes | dict = b"x") -> None:
    s3.client.put_object(Bucket="diptych-models", Key=key, Body=json.dumps(body) if isinstance(body, dict) else body)


def test_only_complete_versions_are_listed(aws, tmp_path):
    """Complete: the card beside the SavedModel (uploaded last). An upload cut before its card,
    a card alone, a name that is not a version and a hidden staging prefix are not versions."""
    root = f"{tmp_path.name}/models"
    card = {"name": "shoes", "version": 1, "kind": "classifier"}
    for version in ("1", "01", ".4.partial"):
        put(aws, f"{root}/shoes/{version}/saved_model.pb")
        put(aws, f"{root}/shoes/{version}/model_card.json", card)
    put(aws, f"{root}/shoes/2/saved_model.pb")  # cut before its card
    put(aws, f"{root}/shoes/2/variables/variables.index")
    put(aws, f"{root}/shoes/3/model_card.json", card)  # a card alone
    settings = Settings(model_root=aws.url(root), store=False, classifier="", generator="")
    repository = Repository(settings)
    found = repository.scan()
    assert {name: [(v.number, v.kind) for v in held] for name, held in found.versions.items()} == \
        {"shoes": [(1, "classifier")]}
    ignored = found.ignored
    assert "no model_card.json yet" in ignored[aws.url(root, "shoes", 2)], ignored
    assert "no saved_model.pb yet" in ignored[aws.url(root, "shoes", 3)], ignored
    assert "leading zero" in ignored[aws.url(root, "shoes", "01")], ignored
    assert set(ignored) == {aws.url(root, "shoes", name) for name in ("2", "3", "01")}
    put(aws, f"{root}/shoes/2/model_card.json", {**card, "version": 2})  # the upload's last object
    assert [version.number for version in repository.scan().versions["shoes"]] == [1, 2]
    one = Repository(Settings(classifier=aws.url(root, "shoes", 1), generator="", store=False)).scan()
    assert one.defaults == {"classifier": "shoes"} and [v.ref for v in one.versions["shoes"]] == [aws.url(root, "shoes", 1)]


def cached(folder) -> tuple[list[int], list[str]]:
    """The cache's versions of shoes by number, and whatever else is there (staging, locks aside)."""
    return sorted(int(path.name.split("-")[1]) for path in folder.iterdir() if path.is_dir()
                  and not path.name.startswith(".")), sorted(path.name for path in folder.glob(".fetch-*"))


def s3_engine(aws, tiny_models, root: str, cache, **settings) -> Engine:
    engine = Engine(Settings(classifier="shoes", generator=str(tiny_models["generator"]), model_root=aws.url(root),
                             cache_dir=str(cache), **{**FAST, **settings}), KINDS)
    engine.load()
    return engine


def test_versions_load_from_s3_beside_the_old_and_the_cache_evicts_the_least_recently_used_unserved(
        aws, tiny_models, tmp_path):
    """16 MiB holds two 7 MiB versions: fetching version 3 while 2 serves evicts version 1
    (released when 2 took over), never 2; each version answers with its own weights."""
    root, cache = f"{tmp_path.name}/models", tmp_path / "cache"
    aws.upload(tiny_models["classifier"], f"{root}/shoes/1")
    engine = s3_engine(aws, tiny_models, root, cache, cache_max_mb=16)
    try:
        assert engine.ready and classify(engine) == "1" and cached(cache) == ([1], [])
        aws.upload(tiny_models["other_classifier"], f"{root}/shoes/2")
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {2: "available"}, 60), versions(engine)
        assert classify(engine) == "2" and cached(cache) == ([1, 2], [])
        aws.upload(tiny_models["classifier"], f"{root}/shoes/3")
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {3: "available"}, 60), versions(engine)
        assert classify(engine) == "3" and cached(cache) == ([2, 3], [])
        source = engine.status()["shoes"].versions[3].source
        assert source == aws.url(root, "shoes", 3)
    finally:
        engine.close()


def test_a_fetch_that_cannot_fit_fails_that_version_leaves_nothing_and_the_old_one_serves(aws, tiny_models, tmp_path):
    root, cache = f"{tmp_path.name}/models", tmp_path / "cache"
    aws.upload(tiny_models["classifier"], f"{root}/shoes/1")
    engine = s3_engine(aws, tiny_models, root, cache, cache_max_mb=10)
    try:
        assert classify(engine) == "1"
        aws.upload(tiny_models["other_classifier"], f"{root}/shoes/2")
        engine.manager.reconcile()
        assert versions(engine) == {1: "available", 2: "failed"}
        reason = engine.status()["shoes"].versions[2].reason
        assert "CacheFull" in reason and "cache_max_mb = 10" in reason, reason
        assert classify(engine) == "1" and cached(cache) == ([1], [])
    finally:
        engine.close()


def test_a_load_request_naming_a_url_outside_the_roots_or_a_bad_one_changes_nothing(aws, repository, tiny_models):
    """A URL is checked as a folder is: outside `model_root` and `allowed_roots`, 403; a bad one, 400."""
    engine = engine_for(repository, tiny_models, allowed_roots=("s3://diptych-models/staging",))
    try:
        before = engine.status()["shoes"].policy
        with pytest.raises(Forbidden, match="outside the model roots"):
            asyncio.run(engine.load_model("shoes", None, {"path": "s3://diptych-models/elsewhere/shoes"}))
        with pytest.raises(ValidationError, match="ftp:// is not a model source"):
            asyncio.run(engine.load_model("shoes", None, {"path": "ftp://diptych-models/staging/shoes"}))
        with pytest.raises(Conflict, match="boots: .* none of the versions"):  # admitted, looked for: none there
            asyncio.run(engine.load_model("boots", None, {"path": "s3://diptych-models/staging/boots"}))
        assert engine.status()["shoes"].policy == before and classify(engine) == "2"
    finally:
        engine.close()


@pytest.mark.parametrize("source", [{"model_root": "s3://bucket/models"}, {"classifier": "s3://bucket/models/shoes"},
                                    {"allowed_roots": ("s3://bucket/staging",)},
                                    {"repository": {"shoes": {"path": "s3://bucket/shoes"}}}])
def test_object_storage_needs_a_writable_cache_dir_at_start_and_a_bound_is_never_none(tmp_path, source):
    """Found at start and naming the setting, not per version (a read-only root file system);
    without object storage the folder is not needed. A tiny positive bound is not 0 (none)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=rf"setting cache_dir: {blocker}/cache is not a writable folder .*s3://bucket"):
        Settings(cache_dir=str(blocker / "cache"), store=False, generator="", **{"classifier": "", **source})
    with pytest.raises(ValueError, match="setting cache_dir"):
        Settings.load({"DIPTYCH_MODEL_ROOT": "s3://bucket/models", "DIPTYCH_CACHE_DIR": str(blocker / "cache")})
    Settings(cache_dir=str(blocker / "cache"), model_root=str(tmp_path), store=False)
    settings = Settings(cache_dir=str(tmp_path / "cache"), cache_max_mb=1e-7, store=False, classifier="", generator="")
    assert Repository(settings).cache.max_bytes == 1


def served_predictions(engine: Engine):
    return asyncio.run(engine.get(Classifier, "shoes").classify([png()], 3)).predictions


def test_a_served_version_uploaded_again_keeps_serving_its_copy_and_the_change_is_said_once(
        aws, tiny_models, tmp_path):
    """Versions are immutable: a new upload over shoes/1 (other weights) is never loaded in
    its place nor mixed in; it is counted once per upload and shown as the version's reason."""
    root, cache = f"{tmp_path.name}/models", tmp_path / "cache"
    aws.upload(tiny_models["classifier"], f"{root}/shoes/1")
    engine = s3_engine(aws, tiny_models, root, cache)
    try:
        before, counted = served_predictions(engine), reuploaded("shoes")
        aws.upload(tiny_models["other_classifier"], f"{root}/shoes/1")
        for _ in range(2):
            engine.manager.reconcile()
        assert versions(engine) == {1: "available"} and cached(cache) == ([1], [])
        assert served_predictions(engine) == before
        assert "uploaded again while it serves" in engine.status()["shoes"].versions[1].reason
        assert reuploaded("shoes") == counted + 1
    finally:
        engine.close()


def reuploaded(model: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value("diptych_model_versions_reuploaded_total",
                                                       {"model": model}) or 0.0


def test_a_fetch_never_mixes_two_uploads(aws, tmp_path, monkeypatch):
    """An upload over a version while it is fetched (here, just after its first object came
    down) fails the fetch and leaves nothing in the cache; so does a card uploaded again since
    the scan listed it; the next scan's version is fetched whole, from the new upload alone."""
    root, card = f"{tmp_path.name}/models", {"name": "shoes", "version": 1, "kind": "classifier"}
    for key, body in (("saved_model.pb", b"old graph"), ("variables/variables.index", b"old index"),
                      ("model_card.json", card)):
        put(aws, f"{root}/shoes/1/{key}", body)
    source = ObjectSource(aws.url(root), Sources(quiet=True), Cache(tmp_path / "cache", 0))
    (listed,) = source.models()["shoes"]
    filesystem = objects._filesystem

    def racing(scheme: str):
        fs = filesystem(scheme)
        get_file = fs.get_file

        def get_then_upload(remote, local, **options):
            get_file(remote, local, **options)
            monkeypatch.setattr(fs, "get_file", get_file)  # once
            put(aws, f"{root}/shoes/1/variables/variables.index", b"new index")
            put(aws, f"{root}/shoes/1/saved_model.pb", b"new graph")

        monkeypatch.setattr(fs, "get_file", get_then_upload)
        return fs

    monkeypatch.setattr(objects, "_filesystem", racing)
    with pytest.raises(objects.Reuploaded, match="changed while it was fetched"):
        source.fetch(listed)
    monkeypatch.setattr(objects, "_filesystem", filesystem)
    assert [path.name for path in (tmp_path / "cache").iterdir() if path.name != ".lock"] == []
    put(aws, f"{root}/shoes/1/model_card.json", {**card, "note": "the new upload"})
    with pytest.raises(objects.Reuploaded, match="uploaded again since it was listed"):
        source.fetch(listed)
    (new,) = source.models()["shoes"]
    folder, release = source.fetch(new)
    assert [(folder / name).read_bytes() for name in ("saved_model.pb", "variables/variables.index")] == \
        [b"new graph", b"new index"] and json.loads((folder / "model_card.json").read_text())["note"] == "the new upload"
    release()

"""The kind settings are checked whole at start, and every mistake is a ValueError naming the
setting as the operator wrote it: a `[kinds.<kind>]` value of the wrong type, an alias and
its table key that disagree, a `kind_modules` module (or its kind's wire) that cannot be
imported, whatever it raises; and a kind may not take a route or gRPC method already served.
The plugin modules are written into a test folder, as an operator's would be."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap

import pytest

from service.core import Settings
from service.grpc import diptych
from service.http.routes import routes_for
from service.kinds import registered


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """`plugin(name, source)` writes the module `name` where `kind_modules` can import it."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


KIND = """
    from service.core.models import ServedModel

    class Thing(ServedModel):
        kind = "thing"
        wire = {wire!r}

    KIND = Thing
"""


@pytest.mark.parametrize("environ, setting", [
    ({"DIPTYCH_KINDS": json.dumps({"classifier": {"runtime": ["litert"]}})}, "kinds.classifier.runtime"),
    ({"DIPTYCH_KINDS": json.dumps({"generator": {"runtime": {"name": "litert"}}})}, "kinds.generator.runtime"),
    ({"DIPTYCH_KINDS": json.dumps({"generator": {"runtime": "onnx"}})}, "kinds.generator.runtime"),
    ({"DIPTYCH_KINDS": json.dumps({"classifier": {"default": 3}})}, "kinds.classifier.default"),
    ({"DIPTYCH_KINDS": json.dumps({"classifier": "litert"}), "DIPTYCH_CLASSIFIER": "x"}, "kinds.classifier"),
    ({"DIPTYCH_CLASSIFIER_RUNTIME": "onnx"}, "classifier_runtime"),
])
def test_a_kind_value_of_the_wrong_type_is_refused_naming_its_setting(environ, setting):
    with pytest.raises(ValueError, match=rf"^setting {re.escape(setting)}[ :]"):
        Settings.load(environ)


def test_an_alias_and_its_table_key_must_agree():
    with pytest.raises(ValueError, match=r"classifier \('a'\) and kinds.classifier.default \('b'\) disagree"):
        Settings(classifier="a", kinds={"classifier": {"default": "b"}})
    with pytest.raises(ValueError, match="generator_runtime .* kinds.generator.runtime .* disagree"):
        Settings(generator_runtime="litert", kinds={"generator": {"runtime": "tensorflow"}})
    agreed = Settings(classifier="a", kinds={"classifier": {"default": "a", "runtime": "tensorflow"}})
    assert (agreed.classifier, agreed.classifier_runtime) == ("a", "tensorflow")


def test_replace_of_the_kind_tables_is_what_the_settings_say():
    """The aliases read back from the tables do not overrule a replaced table (they did: the
    old default and runtime came back)."""
    settings = Settings(classifier="a", classifier_runtime="litert")
    replaced = dataclasses.replace(settings, kinds={"classifier": {"default": "b", "runtime": "tensorflow"}})
    assert replaced.kind_setting("classifier", "default") == replaced.classifier == "b"
    assert replaced.runtime_of("classifier") == replaced.classifier_runtime == "tensorflow"
    assert dataclasses.replace(settings, classifier="c").defaults()["classifier"] == "c"  # an alias given wins
    assert settings.with_kind("classifier", default="d").classifier == "d"


@pytest.mark.parametrize("name, source, raised", [
    ("mistyped", "def broken(:\n", "SyntaxError"),
    ("unlicensed", "raise RuntimeError('no licence server')\n", "RuntimeError: no licence server"),
    ("kindless", "KIND = 3\n", "is not a ServedModel subclass"),
])
def test_a_kind_module_that_cannot_be_imported_is_a_setting_error(plugin, name, source, raised):
    plugin(name, source)
    with pytest.raises(ValueError, match=rf"^setting kind_modules: {name}\b.*{raised}"):
        Settings(kind_modules=(name,))


def test_a_kind_whose_wire_is_missing_is_refused_with_the_settings(plugin):
    name = plugin("wireless", KIND.format(wire="nowhere.at_all"))
    with pytest.raises(ValueError, match=r"^setting kind_modules: wireless: the wire of kind 'thing', "
                                         r"nowhere.at_all: ModuleNotFoundError"):
        Settings(kind_modules=(name,))


SQUATTER = KIND.format(wire="squatter") + """
    from proto.diptych.v1 import diptych_pb2 as pb
    from service.http.endpoints import Endpoint
    from service.kinds.wire import GrpcMethod, Wire

    async def answer(*args):
        return pb.ListModelsResponse()

    WIRE = Wire(routes=(Endpoint("POST", "/thing", answer), Endpoint("GET", "/models", answer, open=True)),
                grpc=(GrpcMethod("ListModels", pb.ListModelsRequest, pb.ListModelsResponse, answer),))
"""


def test_a_kind_may_not_take_a_served_route_or_method(plugin):
    """Its open `GET /models` replaced the shared one (no API key asked), its ListModels the
    models call: refused at start, naming both."""
    kinds = registered((plugin("squatter", SQUATTER),)).values()
    with pytest.raises(ValueError, match=r"the route GET /models of kind 'thing' takes the path of GET /models "
                                         r"of the shared routes"):
        routes_for(kinds)
    with pytest.raises(ValueError, match=r"the gRPC method diptych.v1.Diptych/ListModels of kind 'thing' is "
                                         r"already served, by the models calls"):
        diptych.handlers(None, kinds)
    assert routes_for(registered().values()).find("/models").handler.__name__ == "list_models"  # shipped: fine

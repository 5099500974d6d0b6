"""TF Serving's ModelService over the model repository: `GetModelStatus` and
`HandleReloadConfigRequest`, as `tensorflow-serving-api` clients call them.

A reload config is TF Serving's `ModelServerConfig`, and as in TF Serving its list replaces
the served models: each `ModelConfig` gives a model's `base_path`, `model_version_policy` and
`version_labels` (its traffic, shadow and payload log, which the list cannot say, stay), and
a model the list leaves out is unloaded; leaving out a default model is refused
(FAILED_PRECONDITION), as is any change the core refuses, with nothing changed
(`ModelControl.reload`, core/manager/control.py). Privileged: the `Gate` asks for an admin key.
"""

from __future__ import annotations

from collections import Counter

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc, status_pb2
from tensorflow_serving.config import model_server_config_pb2

from .. import tfserving
from ..core import Engine, ValidationError

Status = get_model_status_pb2.ModelVersionStatus
UNKNOWN_ERROR = 2  # tensorflow.error.Code.UNKNOWN: a version that ended with a failed load
MAX_RELOAD_MODELS = 1024  # models one reload config may list: each is checked whole, on the event loop


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context: grpc.aio.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        found = tfserving.version_status(self.engine, spec.name, spec.version.value if choice == "version" else None,
                                         spec.version_label if choice == "version_label" else None)
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
            Status(version=number, state=Status.State.Value(state),
                   status=status_pb2.StatusProto(error_code=UNKNOWN_ERROR if reason else 0, error_message=reason))
            for number, state, reason in found])

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        if request.config.WhichOneof("config") != "model_config_list":
            raise ValidationError("config", "send a model_config_list (a custom_model_config is not served here)")
        configs = request.config.model_config_list.config
        if len(configs) > MAX_RELOAD_MODELS:
            raise ValidationError("config.model_config_list.config",
                                  f"{len(configs)} models listed: at most {MAX_RELOAD_MODELS}")
        if duplicate := next((name for name, count in Counter(c.name for c in configs).items() if count > 1), None):
            raise ValidationError("config.model_config_list.config.name", f"{duplicate[:100]!r} is listed twice")
        await self.engine.reload_config({config.name: model_table(config) for config in configs})
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))


def model_table(config: model_server_config_pb2.ModelConfig) -> dict[str, object]:
    """A model's settings table, as the core parses (and checks) every table."""
    if not config.name:
        raise ValidationError("config.model_config_list.config.name", "every model config needs a name")
    policy = config.model_version_policy
    chosen = policy.WhichOneof("policy_choice")
    if chosen == "all":
        versions = "all"
    elif chosen == "specific":
        versions = "specific:" + ",".join(map(str, policy.specific.versions))
    else:
        versions = f"latest:{policy.latest.num_versions or 1}"
    table = {"versions": versions, "labels": dict(config.version_labels)}
    return {**table, "path": config.base_path} if config.base_path else table

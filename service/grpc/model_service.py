"""TF Serving's ModelService over the model repository: `GetModelStatus` and
`HandleReloadConfigRequest`, as `tensorflow-serving-api` clients call them.

A reload config is TF Serving's `ModelServerConfig`: each `ModelConfig` gives a model's
`base_path`, `model_version_policy` and `version_labels`, which become that model's
repository settings (models it does not name keep theirs). Privileged: the `Gate` asks for
an admin key.
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc, status_pb2
from tensorflow_serving.config import model_server_config_pb2

from ..core import Engine, NotFound, ValidationError
from ..core.repository import ModelConfig, Policy

Status = get_model_status_pb2.ModelVersionStatus
STATES = {"loading": Status.LOADING, "available": Status.AVAILABLE, "unloading": Status.UNLOADING,
          "failed": Status.END}
UNKNOWN_ERROR = 2  # tensorflow.error.Code.UNKNOWN: a version that ended with a failed load


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context: grpc.aio.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        entry = self.engine.status().get(spec.name)
        if entry is None:
            raise NotFound(f"Could not find any versions of model {spec.name}", "model_spec")
        versions = entry["versions"]
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            versions = {number: slot for number, slot in versions.items() if number == spec.version.value}
        elif choice == "version_label":
            labelled = entry["labels"].get(spec.version_label)
            versions = {number: slot for number, slot in versions.items() if number == labelled}
        if not versions:
            raise NotFound(f"Could not find version {spec.version.value or spec.version_label} of model "
                           f"{spec.name}", "model_spec")
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
            Status(version=number, state=STATES[slot.state],
                   status=status_pb2.StatusProto(error_code=UNKNOWN_ERROR if slot.reason else 0,
                                                 error_message=slot.reason))
            for number, slot in sorted(versions.items())])

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        await self.engine.configure({config.name: model_config(config)
                                     for config in request.config.model_config_list.config})
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))


def model_config(config: model_server_config_pb2.ModelConfig) -> ModelConfig:
    if not config.name:
        raise ValidationError("config.model_config_list.config.name", "every model config needs a name")
    policy = config.model_version_policy
    chosen = policy.WhichOneof("policy_choice")
    if chosen == "all":
        version_policy = Policy(latest=None)
    elif chosen == "specific":
        version_policy = Policy(latest=None, specific=tuple(sorted(policy.specific.versions)))
    else:
        version_policy = Policy(latest=policy.latest.num_versions or 1)
    return ModelConfig(config.name, config.base_path or None, version_policy, dict(config.version_labels))

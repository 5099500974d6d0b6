"""diptych's serving side: the BentoML service (`service.service`), its HTTP and gRPC
adapters, the protocol-free core and the kinds of model."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("diptych")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "dev"

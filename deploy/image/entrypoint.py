"""The container's entrypoint: turn the image's simple knobs into BentoML's, then become the server.

`DIPTYCH_WORKERS` (default 1) is the number of BentoML worker processes, each with its own
models and gRPC server (SO_REUSEPORT). BentoML freezes workers into the service
definition; at run time it only takes them from `BENTOML_CONFIG_OVERRIDES` (JSON), so
that is where they go, merged into whatever overrides are already set. Port and host are
BentoML's own `BENTOML_PORT` / `BENTOML_HOST`; arguments are passed to `bentoml serve`.
"""

from __future__ import annotations

import json
import os
import sys

SERVICE = "diptych"


def bentoml_overrides(environ: dict[str, str]) -> str:
    """BENTOML_CONFIG_OVERRIDES with services.diptych.workers set from DIPTYCH_WORKERS."""
    raw = environ.get("DIPTYCH_WORKERS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"DIPTYCH_WORKERS must be a whole number of at least 1, got {raw!r}")
    try:
        overrides = json.loads(environ.get("BENTOML_CONFIG_OVERRIDES") or "{}")
    except json.JSONDecodeError as error:
        raise SystemExit(f"BENTOML_CONFIG_OVERRIDES is not valid JSON: {error}") from None
    overrides.setdefault("services", {}).setdefault(SERVICE, {})["workers"] = int(raw)
    return json.dumps(overrides)


def main() -> None:
    os.environ["BENTOML_CONFIG_OVERRIDES"] = bentoml_overrides(dict(os.environ))
    command = ["bentoml", "serve", "service.service:Diptych", *sys.argv[1:]]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()

"""The image's HEALTHCHECK: healthy once /readyz answers 200 (both models loaded and warm).

Standard library only, so it starts fast; it asks the port and address the server was given
(`BENTOML_PORT`, `BENTOML_HOST`; a wildcard host is asked on loopback).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

host = os.environ.get("BENTOML_HOST", "127.0.0.1")
if host in ("", "0.0.0.0", "::", "[::]"):
    host = "127.0.0.1"
elif ":" in host and not host.startswith("["):
    host = f"[{host}]"  # an IPv6 address
url = f"http://{host}:{os.environ.get('BENTOML_PORT', '3000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        status = response.status
except urllib.error.HTTPError as error:
    status = error.code
except OSError as error:
    sys.exit(f"{url}: {error}")
if status != 200:
    sys.exit(f"{url}: HTTP {status}")

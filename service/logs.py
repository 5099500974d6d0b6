"""The service's log lines: BentoML's text format, or JSON lines (`log_format = "json"`)
for a log pipeline (Loki, Elasticsearch, Cloud Logging) that parses fields, not text.

A JSON line holds `time` (UTC, ISO 8601), `level`, `logger`, `message`, the worker's
`process`, and `exception` when there is a traceback. BentoML installs its handlers on the
root logger as a worker starts; this keeps them and swaps their format.
"""

from __future__ import annotations

import datetime
import json
import logging


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str) -> None:
    """diptych's INFO lines on (BentoML's handlers sit at WARNING: what the core logs at INFO,
    each model loaded and the runtime chosen for it, would be dropped), and the format."""
    logging.getLogger("diptych").setLevel(logging.INFO)
    if log_format == "json":
        for handler in logging.getLogger().handlers + logging.getLogger("bentoml").handlers:
            handler.setFormatter(JsonLines())

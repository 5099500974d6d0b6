"""Every Grafana dashboard in deploy/grafana/dashboards against a schema of Grafana's
dashboard JSON model (tests/schemas/grafana-dashboard.schema.json says where it comes from).

Grafana itself is never started here: Debian does not package it and nothing else this
project installs from does. Its queries are checked in tests/test_deploy_manifests.py:
each one parses (`promtool check rules`), reads only metrics a real server's /metrics has,
and answers from a real Prometheus scraping that server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "grafana-dashboard.schema.json").read_text())
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
validator = jsonschema.Draft202012Validator(SCHEMA)


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_matches_grafanas_model(path):
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(json.loads(path.read_text()))]
    assert not errors, "\n".join(errors)


def set_path(board: dict, path: tuple, value) -> dict:
    board = copy.deepcopy(board)
    *parents, last = path
    target = board
    for key in parents:
        target = target[key]
    target[last] = value
    return board


MISTAKES = {  # what a hand edit of the JSON gets wrong, and the schema must refuse
    "a panel wider than the grid": (("panels", 0, "gridPos", "w"), 25),
    "a misspelt panel key": (("panels", 0, "titel"), "Model versions"),
    "a target without refId": (("panels", 0, "targets", 0), {"expr": "up"}),
    "an unknown query format": (("panels", 0, "targets", 0, "format"), "csv"),
    "an unknown variable type": (("templating", "list", 0, "type"), "dropdown"),
    "a variable refresh out of range": (("templating", "list", 1, "refresh"), 3),
    "graphTooltip out of range": (("graphTooltip",), 3),
    "a schemaVersion as a string": (("schemaVersion",), "39"),
    "a uid longer than Grafana takes": (("uid",), "d" * 41),
    "an unknown dashboard key": (("rows",), []),
    "a refresh that is no interval": (("refresh",), "often"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_schema_refuses_hand_edit_mistakes(mistake):
    path, value = MISTAKES[mistake]
    board = set_path(json.loads(DASHBOARDS[0].read_text()), path, value)
    assert not validator.is_valid(board), mistake

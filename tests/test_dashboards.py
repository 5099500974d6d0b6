"""Every Grafana dashboard in deploy/grafana/dashboards against Grafana's own dashboard schema.

The schema is the one Grafana Labs publishes: PyPI `grafana-foundation-sdk`
1769699379!11.6.0, typed models that Grafana's code generator (cog) writes from Grafana
11.6's CUE schemas: the dashboard kind, each panel plugin's options and fieldConfig, each
datasource's query. A dashboard is decoded into those models (with the default plugins
registered, so a panel's options decode by its type) and compared with its JSON: a key the
model does not know disappears in `to_json()` and is reported with its path, and every
value must have the type (enum, literal) the model declares for it. A few limits that
Grafana enforces in code rather than in the schema (24 grid columns, the uid's
characters and length, the refresh interval) are checked beside it.

Grafana itself is never started here: Debian does not package it and nothing else this
project installs from does. Its queries are checked in tests/test_deploy_manifests.py:
each one parses (`promtool check rules`), reads only metrics a real server's /metrics has,
and answers from a real Prometheus scraping that server.
"""

from __future__ import annotations

import copy
import enum
import json
import re
import types
import typing

import pytest
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.conftest import ROOT

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
register_default_plugins()


def attribute_for(cls: type, key: str) -> str | None:
    """The model attribute behind JSON `key` (cog writes `gridPos` as grid_pos, `id` as id_val)."""
    wanted = key.replace("_", "").lower()
    return next((name for name in typing.get_type_hints(cls)
                 if name.removesuffix("_val").replace("_", "").lower() == wanted), None)


def conforms(value, hint) -> bool:
    """Whether a JSON value has the type a model annotation declares."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (typing.Any, object):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(item, args[1]) for item in value.values())
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint is not bool:
        return False
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {member.value for member in hint}
    if hint is float:
        return isinstance(value, int | float)
    if isinstance(hint, type) and hasattr(hint, "to_json"):  # a model our JSON failed to decode into
        return isinstance(value, dict)
    return isinstance(value, hint)


def compare(ours, model, hint, path: str, problems: list[str]) -> None:
    """Walk our JSON beside Grafana's decoded model of it, noting what the model loses or mistypes."""
    if isinstance(model, cogruntime.UnknownDataquery):
        problems.append(f"{path}: no query schema for datasource type {ours.get('datasource', {}).get('type')!r}")
    elif hasattr(model, "to_json"):
        compare_model(ours, model, path, problems)
    elif isinstance(model, list) and isinstance(ours, list):
        item_hint = next((typing.get_args(arm)[0] for arm in typing.get_args(hint) or (hint,)
                          if typing.get_origin(arm) is list), typing.Any)
        for index, (item, decoded) in enumerate(zip(ours, model, strict=True)):
            compare(item, decoded, item_hint, f"{path}/{index}", problems)
    elif not conforms(ours, hint):
        problems.append(f"{path}: {ours!r} is not what Grafana's model declares ({hint})")


def compare_model(ours, model, path: str, problems: list[str]) -> None:
    cls = type(model)
    if not isinstance(ours, dict):
        problems.append(f"{path}: {ours!r} where Grafana's model has a {cls.__name__} object")
        return
    encoded = model.to_json()
    hints = typing.get_type_hints(cls)
    for key in ours:
        if key not in encoded:
            problems.append(f"{path}/{key}: not in Grafana's {cls.__name__} (lost in to_json)")
            continue
        attribute = attribute_for(cls, key)
        compare(ours[key], encoded[key], hints[attribute] if attribute else typing.Any, f"{path}/{key}", problems)
    for key in encoded.keys() - ours.keys():
        # Required with no default in Grafana's schema: cog fills in "" (defaults it fills in
        # otherwise are Grafana's own, e.g. a legend's, and may be left out).
        attribute = attribute_for(cls, key)
        if attribute and not conforms(None, hints[attribute]) and encoded[key] == "":
            problems.append(f"{path}/{key}: required by Grafana's {cls.__name__} and missing")


def model_problems(board: dict) -> list[str]:
    """Where `board` and Grafana's typed model of it differ (path: what), [] when they agree."""
    try:
        model = Dashboard.from_json(board)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        return [f"Grafana's model cannot decode it: {error!r}"]
    problems: list[str] = []
    compare_model(board, model, "", problems)
    for index, panel in enumerate(board.get("panels", [])):
        if panel.get("type") != "row" and cogruntime.panelcfg_config(panel.get("type")) is None:
            problems.append(f"/panels/{index}/type: {panel.get('type')!r} is no panel plugin Grafana's schema has")
    return problems


GRID_COLUMNS = 24  # Grafana's GRID_COLUMN_COUNT
UID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # Grafana's util.IsValidShortUID and its 40-character limit
INTERVAL = re.compile(r"([0-9]+(ms|s|m|h|d|w|M|y))?")


def limit_problems(board: dict) -> list[str]:
    """The limits Grafana enforces in code, not in its schema."""
    problems = []
    if not UID.fullmatch(str(board.get("uid", ""))):
        problems.append(f"/uid: {board.get('uid')!r} is not 1-40 letters, digits, - or _")
    if board.get("refresh") is not False and not INTERVAL.fullmatch(str(board.get("refresh", ""))):
        problems.append(f"/refresh: {board.get('refresh')!r} is no interval")
    for index, panel in enumerate(board.get("panels", [])):
        box = panel.get("gridPos", {})
        x, w = box.get("x", 0), box.get("w", 1)
        if type(x) is type(w) is int and not (w > 0 and x >= 0 and x + w <= GRID_COLUMNS):  # types: the model's check
            problems.append(f"/panels/{index}/gridPos: {box} leaves the {GRID_COLUMNS}-column grid")
    return problems


def problems_with(board: dict) -> list[str]:
    return model_problems(board) + limit_problems(board)


def test_there_are_dashboards():
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_matches_grafanas_model(path):
    problems = problems_with(json.loads(path.read_text()))
    assert not problems, "\n".join(problems)


def set_path(board: dict, path: tuple, value) -> dict:
    board = copy.deepcopy(board)
    *parents, last = path
    target = board
    for key in parents:
        target = target[key]
    target[last] = value
    return board


def rename_key(board: dict, path: tuple, new: str) -> dict:
    board = copy.deepcopy(board)
    *parents, old = path
    target = board
    for key in parents:
        target = target[key]
    target[new] = target.pop(old)
    return board


def first_panel(board: dict, panel_type: str) -> int:
    return next(index for index, panel in enumerate(board["panels"]) if panel["type"] == panel_type)


BOARD = json.loads(DASHBOARDS[0].read_text())
TIMESERIES = first_panel(BOARD, "timeseries")

MISTAKES = {  # what a hand edit of the JSON gets wrong, and the path the checker must name
    "a panel wider than the grid": (set_path, ("panels", 0, "gridPos", "w"), 25, "/panels/0/gridPos"),
    "a misspelt panel key": (set_path, ("panels", 0, "titel"), "Model versions", "/panels/0/titel"),
    "a misspelt gridPos": (rename_key, ("panels", 0, "gridPos"), "gridpos", "/panels/0/gridpos"),
    "misspelt targets": (rename_key, ("panels", 0, "targets"), "targts", "/panels/0/targts"),
    "an unknown panel option": (set_path, ("panels", TIMESERIES, "options", "legnd"), {},
                                f"/panels/{TIMESERIES}/options/legnd"),
    "an unknown field option": (set_path, ("panels", TIMESERIES, "fieldConfig", "defaults", "unitt"), "s",
                                f"/panels/{TIMESERIES}/fieldConfig/defaults/unitt"),
    "an unknown panel type": (set_path, ("panels", 0, "type"), "tabel", "/panels/0/type"),
    "a target without refId": (set_path, ("panels", 0, "targets", 0), {"expr": "up", "datasource":
                               {"type": "prometheus", "uid": "${datasource}"}}, "/panels/0/targets/0/refId"),
    "an unknown query format": (set_path, ("panels", 0, "targets", 0, "format"), "csv", "/panels/0/targets/0/format"),
    "an unknown variable type": (set_path, ("templating", "list", 0, "type"), "dropdown", "/templating/list/0/type"),
    "a variable refresh out of range": (set_path, ("templating", "list", 1, "refresh"), 3,
                                        "/templating/list/1/refresh"),
    "graphTooltip out of range": (set_path, ("graphTooltip",), 3, "/graphTooltip"),
    "a schemaVersion as a string": (set_path, ("schemaVersion",), "39", "/schemaVersion"),
    "a gridPos width as a string": (set_path, ("panels", 0, "gridPos", "w"), "12", "/panels/0/gridPos/w"),
    "a uid longer than Grafana takes": (set_path, ("uid",), "d" * 41, "/uid"),
    "an unknown dashboard key": (set_path, ("rows",), [], "/rows"),
    "a refresh that is no interval": (set_path, ("refresh",), "often", "/refresh"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_checker_names_each_hand_edit_mistake(mistake):
    """Each mistake made in a copy of the dashboard is reported, with its path: the checker can fail."""
    edit, path, value, reported = MISTAKES[mistake]
    problems = problems_with(edit(BOARD, path, value))
    assert any(problem.startswith(reported) for problem in problems), (mistake, problems)

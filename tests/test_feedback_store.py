"""The feedback store's footprint and joins (service/core/feedback.py, #27 review): a model
with many labels keeps a sparse confusion, shown sparse in /models and kept off /metrics;
the answers kept share their version's label tuple; a late shadow joins its own request; who
may label (the server's answers to each key: tests/test_feedback_server.py)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.core import Forbidden, Settings, Unauthenticated, context
from service.core.auth import ApiKeys, FeedbackKeys
from service.core.feedback import CONFUSION_SERIES_LABELS, DENSE_LABELS, PREDICTOR, SHADOW, FeedbackStore
from service.kinds.classifier import Classifier
from tests.conftest import toy_model


def many_labels(count: int) -> tuple[str, ...]:
    return tuple(f"class-{index}" for index in range(count))


def confusion_series(model: str) -> list[dict[str, str]]:
    return [sample.labels for family in REGISTRY.collect() if family.name == "diptych_feedback_confusion"
            for sample in family.samples if sample.labels["model"] == model]


def test_many_labels_give_a_sparse_confusion_of_the_cells_answered():
    labels = many_labels(20_000)
    store = FeedbackStore()
    store.record("a", "wide", 1, PREDICTOR, labels, [(7, 0.9), (7, 0.8), (19_999, 0.4)], {})
    for index, truth in enumerate(["class-7", "class-3", "class-3"]):
        store.label("a", truth, index)
    report = store.report("wide", 1)
    assert report["labels"] is None  # not 20,000 names on every /models
    assert report["confusion"] == [{"label": "class-3", "predicted": "class-7", "count": 1},
                                   {"label": "class-3", "predicted": "class-19999", "count": 1},
                                   {"label": "class-7", "predicted": "class-7", "count": 1}]
    store.label("a", "class-19999", 2)  # replaced: its old cell is gone, not left at zero
    assert [(cell["label"], cell["predicted"]) for cell in store.report("wide", 1)["confusion"]] == [
        ("class-3", "class-7"), ("class-7", "class-7"), ("class-19999", "class-19999")]
    assert len(store._counts["wide", "1", PREDICTOR].confusion) == 3
    assert confusion_series("wide") == []  # a series per cell would be up to 20,000² of them


def test_the_confusion_is_a_matrix_up_to_the_dense_bound_and_a_metric_up_to_the_series_bound():
    for count, dense, series in ((CONFUSION_SERIES_LABELS, True, True), (CONFUSION_SERIES_LABELS + 1, True, False),
                                 (DENSE_LABELS + 1, False, False)):
        store, model = FeedbackStore(), f"width-{count}"
        store.record("a", model, 1, PREDICTOR, many_labels(count), [(1, 0.9)], {})
        store.label("a", 0)
        confusion = store.report(model, 1)["confusion"]
        assert isinstance(confusion[0], list) == dense, count
        if dense:
            assert len(confusion) == count and confusion[0][1] == 1 and sum(map(sum, confusion)) == 1
        assert [(each["label"], each["predicted"]) for each in confusion_series(model)] == \
            ([("class-0", "class-1")] if series else []), count


def test_answers_kept_share_their_versions_label_tuple():
    model = toy_model(Classifier, labels=list(many_labels(1000)))
    try:
        model.feedback = store = FeedbackStore()
        for request_id in ("a", "b"):
            model.keep_answers([np.eye(1000, dtype=np.float32)[3]], context.RequestContext(request_id))
        first, second = (store._entries[request_id, 0].answers[PREDICTOR] for request_id in ("a", "b"))
        assert first.labels is second.labels is model.label_tuple  # one tuple per version, not 8 KB per answer
        assert first.labels[first.predicted] == "class-3"
    finally:
        model.close()


def test_a_late_shadow_joins_its_own_request_not_a_later_one_with_the_same_id():
    """Requests A and B both carry id X (a client's own); A's shadow answers after B's predictor."""
    labels, store = ("boot", "sandal"), FeedbackStore()
    first, second = context.RequestContext("server-a", "X"), context.RequestContext("server-b", "X")
    store.record("X", "shoes", 1, PREDICTOR, labels, [(0, 0.9)], first.feedback_entries)  # A answered "boot"
    store.record("X", "shoes", 1, PREDICTOR, labels, [(1, 0.9)], second.feedback_entries)  # B answered "sandal"
    store.record("X", "shoes", 2, SHADOW, labels, [(0, 0.9)], first.feedback_entries)  # A's shadow, late
    store.label("X", "sandal")  # the label is B's: the id now names B's answer
    assert store.tally("shoes", 1).correct == 1 and store.tally("shoes", 1).labelled == 1
    assert store.tally("shoes", 2, SHADOW).labelled == 0  # A's shadow never saw B's request
    assert store.paired("shoes", 1, 2).labelled == 0
    assert first.feedback_entries[0].answers.keys() == {PREDICTOR, SHADOW}  # A's answers, together


def test_labels_need_a_feedback_or_admin_key_wherever_keys_are_on(tmp_path):
    (tmp_path / "labellers").write_text("# labellers\nlabel-two\n")
    settings = Settings.load({"DIPTYCH_FEEDBACK_KEYS": "label-one", "DIPTYCH_FEEDBACK_KEYS_FILE":
                              str(tmp_path / "labellers")})
    assert settings.feedback_keys == ("label-one", "label-two") and "label-one" not in repr(settings)
    api = ApiKeys(("user", "admin", "label-one"))
    cases = {  # (API keys on, feedback keys): key → what it gets
        (True, ("label-one",)): {"label-one": None, "admin": None, "user": Forbidden, "other": Unauthenticated,
                                 None: Unauthenticated},
        (True, ()): {"admin": None, "user": Forbidden, None: Unauthenticated},  # no feedback keys: admins only
        (False, ("label-one",)): {"label-one": None, "admin": None, "user": Unauthenticated, None: Unauthenticated},
        (False, ()): {None: None, "anything": None},  # no keys at all: open, as every route
    }
    for (api_on, feedback), answers in cases.items():
        keys = FeedbackKeys(api if api_on else ApiKeys(()), feedback, ("admin",))
        for key, refused in answers.items():
            header = f"Bearer {key}" if key else None
            if refused is None:
                keys.check(header)
            else:
                with pytest.raises(refused, match="feedback key|API key"):
                    keys.check(header)

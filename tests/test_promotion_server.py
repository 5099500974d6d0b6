"""Promotion and rollback by evidence on a real `bentoml serve` (#27), on synthetic labels with
a known answer: `shoes` and `boots` both serve version 1 (`stable`) with version 2 (another
seed's weights, `canary`) as its shadow, and `promote = {after = 20}`. Labels that agree with the
canary wherever the two differ promote it (the `stable` label moves); labels that agree with the
stable version roll the canary back (it stops shadowing). Fewer than `after` labels decide nothing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import eventually, repository_server
from tests.test_feedback_server import classify, feedback, metric, random_pngs
from tests.test_repository_server import add_version

pytestmark = pytest.mark.slow
IMAGES = 64
AFTER = 20
TABLE = {"versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 100}, "shadow": "canary",
         "feedback": True, "promote": {"after": AFTER, "max_p": 0.05}}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("promotion-repository")
    for name in ("shoes", "boots"):
        (root / name).mkdir()
        add_version(root, name, 1, tiny_models["classifier"])
        add_version(root, name, 2, tiny_models["other_classifier"])
    with repository_server(tmp_path_factory, "promotion", model_root=str(root), classifier="shoes", generator="",
                           repository=json.dumps({"shoes": TABLE, "boots": TABLE})) as server:
        yield server


@pytest.fixture(scope="module")
def images() -> list[str]:
    return random_pngs(IMAGES, seed=11)


def answered(server, name: str, images: list[str]) -> list[tuple[str, int, str, str]]:
    """For each image: (the stable version's request id, the image's index in it, the stable
    version's answer, the canary's answer), in requests of at most 32 images."""
    answers = []
    for start in range(0, len(images), 32):
        chunk = images[start:start + 32]
        version, _, by_canary = classify(server, chunk, f"{name}@canary")
        assert version == "2"
        shadowed = metric(server, "diptych_shadow_requests_total", model=name, outcome="ok") + 1
        version, request_id, by_stable = classify(server, chunk, name)
        assert version == "1"
        # the shadow's answers are kept (it answers after the response) before any label is sent
        assert eventually(lambda shadowed=shadowed: metric(
            server, "diptych_shadow_requests_total", model=name, outcome="ok") >= shadowed, 60)
        answers += [(request_id, index, *pair) for index, pair in enumerate(zip(by_stable, by_canary))]
    return answers


def decision(server, name: str) -> dict | None:
    return server.client.get("/models").json()["promotions"].get(name)


def label(server, answers: list[tuple[str, int, str, str]], by_canary: bool) -> None:
    """Each answer labelled with the canary's answer (`by_canary`) or with the stable version's."""
    results = feedback(server, *({"request_id": request_id, "index": index, "label": canary if by_canary else stable}
                                 for request_id, index, stable, canary in answers))
    assert {each["status"] for each in results} == {"ok"}, results


def test_labels_that_favour_the_canary_promote_it_but_not_before_enough_of_them(server, images):
    answers = answered(server, "shoes", images)
    differ = sum(stable != canary for _, _, stable, canary in answers)
    assert differ >= 16, answers  # different weights: enough pairs where one of the two is right

    label(server, answers[:AFTER - 1], by_canary=True)  # the canary right wherever they differ
    assert decision(server, "shoes") is None  # fewer than `after` labels: no look, whatever they say
    assert classify(server, images[:1], "shoes@stable")[0] == "1"

    label(server, answers[AFTER - 1:], by_canary=True)
    promoted = decision(server, "shoes")
    assert promoted is not None and promoted["decision"] == "promoted", promoted
    assert promoted["p"] <= 0.05 and promoted["candidate_tally"]["correct"] == IMAGES
    assert classify(server, images[:1], "shoes@stable")[0] == "2"
    assert classify(server, images[:1], "shoes")[0] == "2"  # the stable label's traffic follows it
    assert metric(server, "diptych_promotion_decisions_total", model="shoes", decision="promoted") == 1


def test_labels_that_favour_the_stable_version_roll_the_canary_back(server, images):
    answers = answered(server, "boots", images)
    label(server, answers, by_canary=False)  # the stable version always right
    rolled_back = decision(server, "boots")
    assert rolled_back is not None and rolled_back["decision"] == "rolled_back", rolled_back
    assert classify(server, images[:1], "boots@stable")[0] == "1"
    before = metric(server, "diptych_feedback_labelled", model="boots", version="2", role="shadow")
    _, request_id, by_stable = classify(server, images[:4], "boots")
    label(server, [(request_id, index, answer, answer) for index, answer in enumerate(by_stable)], by_canary=False)
    # no shadow answers were kept to be labelled: version 2 stopped shadowing
    assert metric(server, "diptych_feedback_labelled", model="boots", version="2", role="shadow") == before
    assert metric(server, "diptych_promotion_decisions_total", model="boots", decision="rolled_back") == 1

"""Replay: the Fashion-MNIST test set played as traffic against two classifiers of different
quality, the true labels arriving a while after each answer, and the promotion logic
(service/core/promotion.py) deciding on them as the feedback store would feed it.

    python -m benchmarks.replay --weaker WEAKER/1 --better BETTER/1 --seeds 50 --out docs/replay.json

Each model answers the 10,000 test images once (its SavedModel's `classify_pixels`; cached
beside `--out`); each run then replays them in a seeded order. Scenarios: `stable` = the weaker
and the better as canary (a `--canary-share` of the requests), then as shadow (a copy of every
request); then the roles swapped; and the better against itself as canary (equally good: any
decision is wrong, and promote's max_p bounds how often one happens). A label arrives `--delay`
requests after its answer; `evaluate` runs after each `--batch` labels. Reported per scenario
over the seeds: right, wrong and no decisions, and requests and labels until the decision. A
wrong decision between versions of different quality (the weaker promoted, the better rolled
back) is a failure, as is a share of decisions between equals above max_p: exit status 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from service.core.evidence import Paired, Tally
from service.core.promotion import PROMOTED, ROLLED_BACK, Detached, Promotion

MODEL = "classifier"
STABLE, CANDIDATE = 1, 2  # version numbers in the replayed model
PAIR_CELL = {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}  # (stable, shadow) right


class ArrivedLabels:
    """The feedback store's answers (promotion.Evidence), from the labels arrived so far."""

    def __init__(self) -> None:
        self.tallies = {STABLE: [0, 0], CANDIDATE: [0, 0]}
        self.pairs = [0, 0, 0, 0]  # both right, stable only, candidate only, both wrong

    def add(self, version: int, right: bool, shadow_right: bool | None) -> None:
        self.tallies[version][0] += 1
        self.tallies[version][1] += right
        if shadow_right is not None:
            self.pairs[PAIR_CELL[right, shadow_right]] += 1

    def tally(self, model: str, version: int, role: str = "predictor") -> Tally:
        return Tally(*self.tallies[version])

    def paired(self, model: str, stable: int, candidate: int) -> Paired:
        both_right, stable_only, candidate_only, both_wrong = self.pairs
        return Paired(both_right, stable_only, candidate_only, both_wrong)


def replay(right: dict[int, np.ndarray], test: str, args: argparse.Namespace, seed: int) -> dict:
    """One run: requests in a seeded order until a decision or the end of the set."""
    rng = np.random.default_rng(seed)
    table = {"versions": "all", "labels": {"stable": STABLE, "canary": CANDIDATE},
             "promote": {"after": args.after, "max_p": args.max_p}}
    share = round(args.canary_share * 100)
    table.update({"traffic": {"stable": 100 - share, "canary": share}} if test == "split" else
                 {"traffic": {"stable": 100}, "shadow": "canary"})
    store = ArrivedLabels()
    promotion = Promotion(Detached({MODEL: table}), store)
    order = rng.permutation(len(right[STABLE]))
    canary = rng.random(len(order)) < args.canary_share
    answered, arrived = [], 0
    for request, image in enumerate(order, 1):
        version = CANDIDATE if test == "split" and canary[request - 1] else STABLE
        answered.append((version, bool(right[version][image]),
                         bool(right[CANDIDATE][image]) if test == "shadow" else None))
        last = request == len(order)
        due = len(answered) if last else max(0, request - args.delay)
        if due - arrived >= args.batch or (last and due > arrived):
            promotion.observe(MODEL)  # as the feedback path does before it labels (the pairing's baseline)
            for labelled in answered[arrived:due]:
                store.add(*labelled)
            arrived = due
            if (decision := promotion.evaluate(MODEL)) is not None:
                return {"decision": decision.decision, "requests": request, "labels": arrived, "p": decision.p,
                        "look": decision.look}
    return {"decision": None, "requests": len(order), "labels": arrived}


def predictions(folder: str, cache: Path) -> np.ndarray:
    """The model's answer (a class index of the test set) for each of the 10,000 test images."""
    from contract.card import ModelCard
    from training.data import load_dataset

    data = load_dataset("fashion-mnist", split="test")
    if cache.exists():
        return np.load(cache)
    import tensorflow as tf

    classify = tf.saved_model.load(folder).signatures["classify_pixels"]
    scores = np.concatenate([classify(images=tf.constant(data.images[start:start + 250]))["scores"].numpy()
                             for start in range(0, len(data.images), 250)])
    labels = ModelCard.read(folder).labels
    answers = np.array([data.class_names.index(labels[index]) for index in scores.argmax(1)])
    np.save(cache, answers)
    return answers


def summary(runs: list[dict], better: str | None) -> dict:
    """Right, wrong and no decisions; requests and labels until the decisions taken."""
    right = {"stable": ROLLED_BACK, "candidate": PROMOTED}.get(better)
    decided = [run for run in runs if run["decision"]]
    return {"runs": len(runs), "right": sum(run["decision"] == right for run in decided),
            "wrong": sum(run["decision"] != right for run in decided), "none": len(runs) - len(decided),
            **{f"{what}_median": statistics.median(run[what] for run in decided) if decided else None
               for what in ("requests", "labels")},
            "requests_max": max((run["requests"] for run in decided), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weaker", required=True, help="a classifier version folder")
    parser.add_argument("--better", required=True, help="a classifier version folder, more accurate")
    parser.add_argument("--seeds", type=int, default=50, help="runs per scenario, seeds 0..N-1")
    parser.add_argument("--after", type=int, default=200, help="promote.after: labelled answers per look")
    parser.add_argument("--max-p", type=float, default=0.05, help="promote.max_p")
    parser.add_argument("--canary-share", type=float, default=0.5, help="the canary's share of the traffic")
    parser.add_argument("--delay", type=int, default=500, help="requests between an answer and its label")
    parser.add_argument("--batch", type=int, default=50, help="labels per feedback call (evaluate after each)")
    parser.add_argument("--out", type=Path, required=True, help="the results, JSON (predictions cached beside it)")
    args = parser.parse_args()
    answers = {name: predictions(getattr(args, name), args.out.with_suffix(f".{name}.npy"))
               for name in ("weaker", "better")}
    from training.data import load_dataset

    truth = load_dataset("fashion-mnist", split="test").labels
    right = {name: answers[name] == truth for name in answers}
    scenarios = [(f"{stable} stable, {candidate} as {'canary' if test == 'split' else 'shadow'}", stable, candidate,
                  test) for stable, candidate in [("weaker", "better"), ("better", "weaker"), ("better", "better")]
                 for test in ("split", "shadow") if stable != candidate or test == "split"]
    results = {"accuracy": {name: float(right[name].mean()) for name in right},
               "settings": {key: value for key, value in vars(args).items() if key not in ("weaker", "better", "out")},
               "scenarios": {}}
    for name, stable, candidate, test in scenarios:
        runs = [replay({STABLE: right[stable], CANDIDATE: right[candidate]}, test, args, seed)
                for seed in range(args.seeds)]
        better = None if stable == candidate else "candidate" if candidate == "better" else "stable"
        results["scenarios"][name] = summary(runs, better)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"accuracy: weaker {results['accuracy']['weaker']:.4f}, better {results['accuracy']['better']:.4f}")
    print("| scenario | runs | right | wrong | none | requests until (median, max) | labels until (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results["scenarios"].items():
        print(f"| {name} | {row['runs']} | {row['right']} | {row['wrong']} | {row['none']} | "
              f"{row['requests_median']}, {row['requests_max']} | {row['labels_median']} |")
    equal = results["scenarios"]["better stable, better as canary"]
    failed = any(row["wrong"] for name, row in results["scenarios"].items() if row is not equal) or \
        equal["wrong"] > args.max_p * equal["runs"]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

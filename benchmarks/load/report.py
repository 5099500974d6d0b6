"""The run's verdicts and tables: diptych against the raw limit and the naive peer, the
references compared across phases, and the Markdown tables (also of an earlier --out file)."""

from __future__ import annotations

from typing import Any


def best_raw(rows: dict[str, dict[str, float]], prefix: str) -> tuple[str, dict[str, float]]:
    """The fastest raw row whose name starts with `prefix` (model only: not the + png rows)."""
    return max(((name, row) for name, row in rows.items() if name.startswith(prefix) and "+ png" not in name),
               key=lambda item: item[1]["images/s"])


def raw_call(rows: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """The lowest p50 of one image through the model (batch 1) among the rows starting with `prefix`."""
    return min((row for name, row in rows.items() if name.startswith(prefix) and row["batch"] == 1
                and "+ png" not in name), key=lambda row: row["p50 ms"])


def find(results: list[dict[str, Any]], target: str, protocol: str, phase: str) -> dict[str, Any] | None:
    return next((r for r in results if (r["target"], r["protocol"], r["phase"]) == (target, protocol, phase)), None)


def ratios(results: list[dict[str, Any]], raw: dict[str, dict[str, float]], served: dict[str, str]) -> list[dict[str, Any]]:
    """For classify and generate, per diptych protocol, from the pure phases: throughput (img/s
    at --concurrency) and CPU per image against the raw limit (the best raw row of any runtime),
    against the raw rows of the runtime diptych serves the model with (`served`, from its
    /models), and against the naive peer; the p50 of one request at a time against one raw
    call of that runtime and against the naive peer; p50/p99 at saturation against the naive peer."""
    rows = []
    for kind, model in (("classify", "classifier"), ("generate", "generator")):
        runtime = served.get(model, "tensorflow")
        prefix = f"{kind} {runtime}" if any(name.startswith(f"{kind} {runtime}") for name in raw) else kind
        for protocol in ("http", "grpc"):
            ours = find(results, "diptych", protocol, kind)
            if ours is not None and ours["all"]["images"]:
                rows.append(ratio_row(results, raw, kind, protocol, runtime, prefix))
    return rows


def ratio_row(results: list[dict[str, Any]], raw: dict[str, dict[str, float]], kind: str, protocol: str,
              runtime: str, prefix: str) -> dict[str, Any]:
    """One diptych protocol's row of `ratios`; `prefix` names the raw rows of its runtime."""
    (limit_name, limit), (same_name, same) = best_raw(raw, kind), best_raw(raw, prefix)
    ours, ours_one = find(results, "diptych", protocol, kind), find(results, "diptych", protocol, f"{kind} c1")
    speed, cpu = ours["all"]["img/s"], ours["server cpu ms/image"]
    row: dict[str, Any] = {
        "kind": kind, "protocol": protocol, "runtime": runtime, "img/s": speed, "cpu ms/img": cpu,
        "raw limit": limit_name, "raw img/s": limit["images/s"], "x raw": speed / limit["images/s"],
        "raw cpu / ours": limit["cpu ms"] / cpu,
        "raw same runtime": same_name, "raw same runtime img/s": same["images/s"],
        "x raw same runtime": speed / same["images/s"], "raw same runtime cpu / ours": same["cpu ms"] / cpu,
    }
    if ours_one:
        one = raw_call(raw, prefix)
        row.update({"p50 c1 ms": ours_one["all"]["p50 ms"], "raw call p50 ms": one["p50 ms"],
                    "p50 c1 / raw call": ours_one["all"]["p50 ms"] / one["p50 ms"]})
    return {**row, **naive_ratios(results, kind, ours, ours_one)}


def naive_ratios(results: list[dict[str, Any]], kind: str, ours: dict[str, Any],
                 ours_one: dict[str, Any] | None) -> dict[str, Any]:
    """diptych's pure phases of `kind` against the naive peer's, where it ran them."""
    naive, naive_one = find(results, "naive", "http", kind), find(results, "naive", "http", f"{kind} c1")
    row: dict[str, Any] = {}
    if naive and naive["all"]["images"]:
        cpu = ours["server cpu ms/image"]
        row.update({"naive img/s": naive["all"]["img/s"], "x naive": ours["all"]["img/s"] / naive["all"]["img/s"],
                    "naive cpu ms/img": naive["server cpu ms/image"],
                    "naive cpu / ours": naive["server cpu ms/image"] / cpu,
                    "p50 / naive": ours["all"]["p50 ms"] / naive["all"]["p50 ms"],
                    "p99 / naive": ours["all"]["p99 ms"] / naive["all"]["p99 ms"]})
    if naive_one and ours_one:
        row["p50 c1 / naive"] = ours_one["all"]["p50 ms"] / naive_one["all"]["p50 ms"]
    return row


def consistency(results: list[dict[str, Any]]) -> list[str]:
    """The references of every phase against the first diptych one: same pixels per seed,
    same top-1 per image (the naive peer runs TensorFlow on the graph's own decoder)."""
    notes, first = [], next((r for r in results if r["target"] == "diptych"), None)
    if first is None:
        return notes
    for result in results:
        name = f"{result['target']} {result['protocol']} {result['phase']}"
        pixels, top1 = result["reference"]["generate_pixels"], result["reference"]["classify_top1"]
        differ = [key for key, digests in pixels.items() if digests != first["reference"]["generate_pixels"].get(key)]
        if differ:
            notes.append(f"{name}: generated pixels differ from diptych {first['protocol']}'s for {len(differ)} of "
                         f"{len(pixels)} (seed/count/class): {differ[:4]}")
        labels = [i for i, (a, b) in enumerate(zip(top1, first["reference"]["classify_top1"])) if a != b]
        if labels:
            notes.append(f"{name}: top-1 differs on sample images {labels}")
    return notes


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_tables(report: dict[str, Any]) -> None:
    print_phases(report["phases"])
    print_raw(report["raw"])
    print_memory(report["memory"])
    print_ratios(report["ratios"], report["raw"])


def print_phases(phases: list[dict[str, Any]]) -> None:
    print("\n## Load: per target, protocol, phase and request kind\n")
    print("| target | protocol | phase | conc. | kind | requests | req/s | img/s | p50 ms | p99 ms | 5xx | mismatches "
          "| lost | transport | server CPU ms/req | server CPU cores | client CPU cores | load avg |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in phases:
        elapsed = result["elapsed s"]
        for kind, row in [*result["kinds"].items(), ("all", result["all"])]:
            extra = ((fmt(result["server cpu ms/request"]), fmt(result["server cpu s"] / elapsed, 2),
                      fmt(result["client cpu s"] / elapsed, 2), fmt(result["load average"][0]))
                     if kind == "all" else ("", "", "", ""))
            print(f"| {result['target']} | {result['protocol']} | {result['phase']} | {result['concurrency']} | {kind} "
                  f"| {row['requests']} | {fmt(row['req/s'])} | {fmt(row['img/s'])} | {fmt(row['p50 ms'])} "
                  f"| {fmt(row['p99 ms'])} | {row['5xx']} | {row['mismatches']} | {row['lost']} "
                  f"| {row['transport errors']} | {' | '.join(extra)} |")


def print_raw(raw: dict[str, dict[str, float]]) -> None:
    print("\n## Raw in-process limit (this process, best of the runs before and after the services)\n")
    print("| raw | images/s | p50 ms | p99 ms | CPU ms/image |")
    print("|---|---:|---:|---:|---:|")
    for name, row in raw.items():
        print(f"| {name} | {row['images/s']:.1f} | {row['p50 ms']:.2f} | {row['p99 ms']:.2f} | {row['cpu ms']:.2f} |")


def print_memory(memories: dict[str, dict[str, Any]]) -> None:
    print("\n## Memory (RSS of the service's processes)\n")
    print("| target | process | before MiB | after MiB | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for target, memory in memories.items():
        for name, row in memory["processes"].items():
            print(f"| {target} | {name} | {fmt(row['before MiB'])} | {fmt(row['after MiB'])} | {fmt(row['peak MiB'])} |")
        print(f"| {target} | **all** | {fmt(memory['total before MiB'])} | {fmt(memory['total after MiB'])} "
              f"| {fmt(memory['total peak MiB'])} |")
    for target, memory in memories.items():
        if "flat" not in memory:
            print(f"\n{target}: {memory['samples']} memory samples under the mixed load: too few to judge the trend")
        else:
            print(f"\n{target}: {memory['minutes under load']:.1f} min of mixed load, {memory['samples']} samples; RSS grew "
                  f"{memory['growth first third MiB']} MiB in the first third, {memory['growth last third MiB']} MiB "
                  f"in the last third: {'flat' if memory['flat'] else 'STILL CLIMBING'}")


def print_ratios(rows: list[dict[str, Any]], raw: dict[str, dict[str, float]]) -> None:
    print("\n## Ratios, from the pure phases (img/s at the load's concurrency; c1: one request at a time)\n")
    print("Throughput: diptych's images/s ÷ the other's (higher is better for diptych); CPU: the other's CPU ms "
          "per image ÷ diptych's (higher: diptych cheaper); latency: diptych's ÷ the other's (lower is better).\n")
    print("| kind | protocol | diptych runtime | img/s | × raw limit | × raw same runtime | × naive "
          "| CPU: raw limit ÷ | raw same runtime ÷ | naive ÷ | p50 c1 ms | ÷ raw call | ÷ naive c1 "
          "| p50 ÷ naive | p99 ÷ naive |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['kind']} | {row['protocol']} | {row['runtime']} | {fmt(row['img/s'])} | {fmt(row['x raw'], 2)} "
              f"| {fmt(row['x raw same runtime'], 2)} | {fmt(row.get('x naive'), 2)} | {fmt(row['raw cpu / ours'], 2)} "
              f"| {fmt(row['raw same runtime cpu / ours'], 2)} | {fmt(row.get('naive cpu / ours'), 2)} "
              f"| {fmt(row.get('p50 c1 ms'))} | {fmt(row.get('p50 c1 / raw call'), 2)} | {fmt(row.get('p50 c1 / naive'), 2)} "
              f"| {fmt(row.get('p50 / naive'), 2)} | {fmt(row.get('p99 / naive'), 2)} |")
    names = {(row["kind"], row["raw limit"], row["raw same runtime"]) for row in rows}
    for kind, limit, same in sorted(names):
        print(f"\n{kind}: raw limit = {limit} ({raw[limit]['images/s']:.1f} img/s); raw same runtime = "
              f"{same} ({raw[same]['images/s']:.1f} img/s)", end="")
    print()

"""Sustained mixed load: diptych over HTTP and gRPC, a naive peer and the raw limit, in one run.

    python -m benchmarks.load                                   # classifier:latest, generator:latest
    python -m benchmarks.load --duration 20 --pure-duration 10 --raw-seconds 3   # a quick look
    python -m benchmarks.load --classifier models/classifier/1 --generator models/generator/1

Phases, one after the other, each driven by a load-generator process of its own (asyncio:
httpx.AsyncClient for HTTP, grpc.aio diptych.v1 stubs for gRPC) with `--concurrency`
workers, each sending its next request as soon as the last one is answered:

1. Raw, in this process (`benchmarks.serving`'s measurement): the classifier's
   `serving_default` on 1, 8 and 32 encoded images per call and the LiteRT pool (one
   single-threaded interpreter per core); the generator's `serving_default` on 1, 4 and 32
   latents per call (and the same with the PNG encoding of every image). The best row of
   each model is its raw limit. Measured again after the services, keeping the best.
2. diptych (`bentoml serve service.service:Diptych`), for each protocol: the **mixed** load
   for `--duration` — classify 1 image, classify 8, generate 1-4 images from a seed (with and
   without a class), bad requests (bad base64, garbage image, too many images, count over
   the limit, unknown class, top_k out of range) — then **pure** phases of
   `--pure-duration`: classify only (1 and 8 images) and generate only at `--concurrency`
   (throughput), and one-image classify / generate at concurrency 1 (latency).
3. The naive peer (`benchmarks/naive_service.py`: the same SavedModels behind a plain
   BentoML service, one eager signature call per image, no batching, no LiteRT), HTTP only
   (BentoML's new-style services serve no gRPC), the same phases.

Every response is checked against its request: classify — one prediction per image, top_k
distinct known labels, scores in [0, 1] and sorted, and every score within 1e-3 of what the
same image got alone at the start (so an answer given to the wrong request or image shows);
generate — `count` PNGs, the seed echoed, byte-identical to the reference that the same
seed, count and class gave at the start (which decoded to the model's image size and mode);
bad requests — the documented 4xx (or INVALID_ARGUMENT) with a message. Counted apart: 5xx
(and gRPC INTERNAL/UNKNOWN/UNAVAILABLE/RESOURCE_EXHAUSTED/server DEADLINE_EXCEEDED),
mismatches, lost (no answer within `--timeout`), transport errors.

Meanwhile the service's processes (`bentoml serve` and its workers) are sampled every
`--sample-every` seconds from /proc: RSS per process, and CPU time, so each phase reports
the server's CPU per request and image. Memory must flatten: the growth in the last third
of the time under load is compared with the first third. The load generator's own CPU is
reported too (it shares the two cores with the server). Results go to `--out` as JSON.
Exits 1 when diptych answered any 5xx, mismatch, lost or transport error, or its memory
kept climbing.

The modules: `cli` (the flags and the run), `phases` (the raw rows, the services and a
load-generator process per phase), `clients` (the load generator), `protocols` (HTTP and
gRPC behind one interface), `checks` (the references and the answer checks), `sampler`
(the /proc memory and CPU samples) and `report` (the ratios and the tables).
"""

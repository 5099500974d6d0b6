"""The bulk jobs (`python -m service.batch`, docs/batch.md) on real files and the tiny real
models: rows as the service computes them, the generator's layout and determinism, a real
SIGKILL mid-job and the resume, shards, and a real two-node Ray cluster on loopback whose
output equals the in-process output row for row.

A killed job is caught at a known place without sleeping: a named pipe (FIFO) stands
where the job will read (classify) or write (generate) a file, so the job blocks there,
the parts before it logged, until the test kills it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.imagefolder import class_folder, class_name
from service.batch import generate
from service.batch.cli import main
from service.batch.joblog import JobLog, JobLogError
from service.batch.models import ModelArgumentError, parse, settings_for
from service.batch.sources import Listing, SourceError, list_files, read_bytes
from service.batch.writers import write_rows
from service.core import LimitExceeded, Settings
from tests.conftest import ROOT, eventually, unavailable

BATCH = [sys.executable, "-m", "service.batch"]
TIMEOUT_S = 600  # one CLI run: TensorFlow start-up and a model load on a busy 2-core machine


# -- pieces --------------------------------------------------------------------------------------


def test_model_references_parse_and_name_the_one_model_to_load():
    assert parse(None).text is None
    assert (parse("classifier").name, parse("classifier").version) == ("classifier", None)
    assert (parse("classifier:3").name, parse("classifier:3").version) == ("classifier", "3")
    assert (parse("classifier@prod").name, parse("classifier@prod").label) == ("classifier", "prod")
    assert parse("models/classifier/1").folder == "models/classifier/1"
    for bad in (":3", "classifier:", "classifier@", "classifier:3@prod"):
        with pytest.raises(ModelArgumentError):
            parse(bad)
    labelled = settings_for("classifier", parse("classifier@prod"), Settings())
    assert labelled.defaults() == {"classifier": "classifier:latest"} and labelled.poll_s == 0  # the engine resolves it
    settings = settings_for("classifier", parse("classifier:3"), Settings())
    assert settings.defaults() == {"classifier": "classifier:3"}  # the generator is not loaded
    assert settings_for("generator", parse(None), Settings()).defaults() == {"generator": "generator:latest"}


def test_sources_folder_glob_and_lists(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.png", ".hidden.png", ".cache/d.png", "sub/notes.txt", "manifest.jsonl",
                 "sub/E.WEBP"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    os.mkfifo(tmp_path / "in" / "pipe.png")  # reading it would wait for a writer: not a file to classify
    folder = [str(tmp_path / "in" / name) for name in ("a.jpg", "b.png", "sub/E.WEBP", "sub/c.png")]
    listed = list_files(str(tmp_path / "in"))
    assert (listed.files, listed.errors, listed.skipped) == (folder, {}, 3)  # by extension, as the trainer
    assert list_files(str(tmp_path / "in" / "**" / "*.png")).files == [folder[1], folder[3]]
    assert list_files(str(tmp_path / "in" / "*")) == Listing(folder[:2], {}, 2)  # the manifest, the pipe; no sub/
    (tmp_path / "list.txt").write_text("# archive\nin/b.png\n\nin/sub/notes.txt\n" + folder[0] + "\n")
    assert list_files(str(tmp_path / "list.txt")).files == [  # a list is taken as written
        str(tmp_path / "in/b.png"), str(tmp_path / "in/sub/notes.txt"), folder[0]]
    (tmp_path / "list.csv").write_text("id,path\n1,in/sub/c.png\n2,in/a.jpg\n")
    assert list_files(str(tmp_path / "list.csv")).files == [str(tmp_path / "in/sub/c.png"),
                                                            str(tmp_path / "in/a.jpg")]
    with pytest.raises(SourceError):
        list_files(str(tmp_path / "nothing*.png"))
    with pytest.raises(SourceError, match="1 other files"):
        list_files(str(tmp_path / "in" / "sub" / "*.txt"))
    with pytest.raises(SourceError):
        list_files(str(tmp_path / "missing"))


def test_symlink_loops_are_a_row_each_never_a_walk_without_end(tmp_path):
    """Two links back up in one folder: `glob.glob` would walk 2^40 paths (measured: it never
    ends); the walk lists each real folder once and each loop is a row with its error."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "in" / "sub" / "up").symlink_to("..")
    (tmp_path / "in" / "sub" / "top").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "sub" / "same").symlink_to(".")
    (tmp_path / "in" / "self.png").symlink_to("self.png")
    (tmp_path / "in" / "gone.png").symlink_to("nowhere.png")  # broken: a row, whose read says why
    loops = {str(tmp_path / "in" / name): error for name, error in [
        ("sub/up", f"a symlink loop: a link to {tmp_path / 'in'}, a folder already listed"),
        ("sub/top", f"a symlink loop: a link to {tmp_path / 'in'}, a folder already listed"),
        ("sub/same", f"a symlink loop: a link to {tmp_path / 'in' / 'sub'}, a folder already listed"),
        ("self.png", "a symlink loop: it never reaches a file")]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a hang fails the test instead of stopping the run
        folder = pool.submit(list_files, str(tmp_path / "in")).result(timeout=120)
        globbed = pool.submit(list_files, str(tmp_path / "in" / "**" / "*.png")).result(timeout=120)
    for listing in (folder, globbed):
        assert listing.errors == loops
        assert listing.files == sorted([*loops, str(tmp_path / "in/gone.png"), str(tmp_path / "in/sub/a.png")])
    assert list_files(str(tmp_path / "in" / "sub" / "*.png")).errors == {}  # a glob that does not go there


def test_a_glob_of_many_double_stars_is_matched_in_one_walk(tmp_path):
    """Each `**` may match any number of folders: trying every split was exponential in their
    number (30 of them, 10 folders deep: it never ended)."""
    deep = tmp_path / "in" / Path(*"abcdefghij")
    deep.mkdir(parents=True)
    (deep / "x1.png").write_bytes(b"x")
    (deep / "y1.png").write_bytes(b"x")
    stars = str(tmp_path / "in" / Path(*["**"] * 30))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a hang fails the test instead of stopping the run
        assert pool.submit(list_files, f"{stars}/x*.png").result(timeout=120).files == [str(deep / "x1.png")]
        with pytest.raises(SourceError, match="matches no image file"):
            pool.submit(list_files, f"{stars}/z*.png").result(timeout=120)


def test_a_listed_path_that_is_no_regular_file_is_refused_without_opening_it_to_wait(tmp_path):
    """A list may name a named pipe: a plain open() waits for a writer for ever."""
    os.mkfifo(tmp_path / "pipe.png")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(OSError, match="not a regular file"):
            pool.submit(read_bytes, str(tmp_path / "pipe.png")).result(timeout=120)
    with pytest.raises(IsADirectoryError):
        read_bytes(str(tmp_path))


def test_a_file_larger_than_a_request_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as file:
        file.truncate(20 * 2**30)  # sparse: 20 GiB that cost no disk
    limit = Settings().max_body_bytes
    with pytest.raises(LimitExceeded, match=f"the file is 21,474,836,480 bytes, more than the limit of {limit:,}"):
        read_bytes(str(huge), limit)
    (tmp_path / "small.png").write_bytes(b"x" * 1001)
    with pytest.raises(LimitExceeded, match="1,000 bytes"):
        read_bytes(str(tmp_path / "small.png"), 1000)
    assert read_bytes(str(tmp_path / "small.png"), 1001) == b"x" * 1001


def test_writers_give_the_same_rows_in_every_format(tmp_path):
    import pyarrow.parquet as pq

    rows = [{"path": "a.png", "label": "Bag", "score": 0.75, "top_k": [{"label": "Bag", "score": 0.75}],
             "error": None, "model": "classifier", "version": "1"},
            {"path": "b.txt", "label": None, "score": None, "top_k": [], "error": "not an image", "model": "classifier",
             "version": "1"}]
    parts = [[rows[1]], [rows[0]]]  # a part of failures alone first: the Parquet schema cannot come from it
    for suffix in (".parquet", ".csv", ".jsonl"):
        assert write_rows(tmp_path / f"out{suffix}", iter(parts)) == {"rows": 2, "errors": 1}
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == [rows[1], rows[0]]
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [rows[1], rows[0]]
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0] == "path,label,score,top_k,error,model,version"
    assert csv_lines[2] == 'a.png,Bag,0.75,"[{""label"": ""Bag"", ""score"": 0.75}]",,classifier,1'
    assert not list(tmp_path.glob(".*.tmp"))


def test_job_log_keeps_whole_parts_and_refuses_another_job(tmp_path):
    items = [{"path": str(i)} for i in range(10)]
    log = JobLog(tmp_path / "job", {"job": "classify", "top_k": 5}, items, part_size=4)
    assert log.open() == 0 and log.parts == 3 and [log.size(p) for p in range(3)] == [4, 4, 2]
    log.write(1, [{"row": 4}, {"row": 5}, {"row": 6}, {"row": 7}])
    assert log.pending() == [0, 2] and log.pending((1, 2)) == []
    assert JobLog(tmp_path / "job", {"job": "classify", "top_k": 5}, items, part_size=4).open() == 1
    with pytest.raises(JobLogError, match="items_sha256, top_k"):
        JobLog(tmp_path / "job", {"job": "classify", "top_k": 3}, items[:9], part_size=4).open()
    assert list(log.rows([1])) == [[{"row": 4}, {"row": 5}, {"row": 6}, {"row": 7}]]
    assert not list((tmp_path / "job").rglob(".*.tmp"))


def test_image_seeds_and_class_folders():
    assert generate.block_seed(0, 7, 3) == generate.block_seed(0, 7, 3)
    assert len({generate.block_seed(seed, c, i) for seed in (0, 1) for c in range(10) for i in range(100)}) == 2000
    for name in ("T-shirt/top", "Ankle boot", ".hidden", "100%"):
        folder = class_folder(name)
        assert "/" not in folder and not folder.startswith(".") and class_name(folder) == name
    assert class_folder("Ankle boot") == "Ankle boot"


def test_latents_are_the_same_however_the_items_are_split():
    """Image i of class c is row i % 64 of the generator's latents for its block's seed."""
    from service.kinds import Generator
    from tests.conftest import toy_model

    model = toy_model(Generator, latent_dim=4, classes=["a", "b"], conditional=True)
    try:
        items = [{"class_id": 1, "index": index} for index in range(60, 140)]
        seeds, whole = generate._plan(model, 9, items)
        parts = [generate._plan(model, 9, items[start:start + 7])[1].latents for start in range(0, 80, 7)]
        assert np.array_equal(np.concatenate(parts), whole.latents)
        assert np.array_equal(whole.latents[10], model.latents_for_seed(generate.block_seed(9, 1, 1), 64)[6])  # index 70
        assert seeds[10] == generate.block_seed(9, 1, 1) and whole.class_ids.tolist() == [1] * 80
    finally:
        model.close()


# -- real files, real models ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Real images in a folder tree: Fashion-MNIST test images (PNG), photos (JPEG and WebP,
    RGB, larger than the model), a grey JPEG, a truncated PNG, a text file, a hidden file."""
    from skimage import data

    from training.data import load_dataset

    root = tmp_path_factory.mktemp("archive")
    (root / "shirts" / "more").mkdir(parents=True)
    images = load_dataset("fashion-mnist", "test").images[:60, ..., 0]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(root / ("shirts/more" if i % 3 else "shirts") / f"{i:03d}.png")
    Image.fromarray(data.coffee()).save(root / "coffee.jpg", quality=90)
    Image.fromarray(data.camera()).save(root / "camera.jpg")
    Image.fromarray(data.astronaut()).save(root / "astronaut.webp")
    (root / "broken.png").write_bytes((root / "shirts" / "000.png").read_bytes()[:120])
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def batch(*args: str | Path) -> None:
    assert main([str(arg) for arg in args]) == 0


def rows_of(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.suffix == ".parquet" else [
        json.loads(line) for line in path.read_text().splitlines()]


def served(kind, folder: Path, **settings):
    """The model as the service loads it (the engine, the kind, LiteRT), for the service's own answers."""
    from service.core import Engine
    from service.kinds import KINDS

    settings = Settings(**{f"{kind.kind}_runtime": "litert", **settings})
    engine = Engine(settings_for(kind.kind, parse(str(folder)), settings), KINDS)
    engine.load()
    return engine, engine.get(kind)


@pytest.mark.slow
def test_classify_gives_a_row_per_file_as_the_service_classifies_it(tiny_models, archive, tmp_path, capsys):
    from service.kinds import Classifier

    model_dir = tiny_models["classifier"]
    batch("classify", archive, "--out", tmp_path / "out.parquet", "--model", model_dir, "--runtime", "litert",
          "--part-size", "16")
    summary = capsys.readouterr().out
    assert "64 images in" in summary and "1 errors" in summary and "(64 rows)" in summary
    assert "1 files skipped (not images by their extension)" in summary  # notes.txt
    rows = rows_of(tmp_path / "out.parquet")
    assert [row["path"] for row in rows] == list_files(str(archive)).files  # each image, in order, no hidden one
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert errors == {"broken.png": "the image cannot be decoded (truncated or corrupt file)"}
    engine, model = served(Classifier, model_dir, max_images=100)
    try:
        good = [row for row in rows if not row["error"]]
        expected = asyncio.run(model.classify([Path(row["path"]).read_bytes() for row in good], top_k=5))
    finally:
        engine.close()
    for row, top in zip(good, expected.predictions):
        assert [(entry["label"], entry["score"]) for entry in row["top_k"]] == top
        assert (row["label"], row["model"], row["version"]) == (top[0][0], "classifier", "1")
    # The same rows as CSV and JSON Lines; a finished job is not run again by mistake.
    batch("classify", archive, "--out", tmp_path / "out.jsonl", "--model", model_dir, "--runtime", "litert")
    assert rows_of(tmp_path / "out.jsonl") == rows
    assert main(["classify", str(archive), "--out", str(tmp_path / "out.jsonl"), "--model", str(model_dir)]) == 2
    assert "exists" in capsys.readouterr().err
    batch("classify", archive, "--out", tmp_path / "out.csv", "--model", model_dir, "--runtime", "litert", "--top-k", "2")
    assert (tmp_path / "out.csv").read_text().count("\n") == 65


@pytest.mark.slow
def test_classify_a_generated_folder_with_a_symlink_loop_and_a_huge_file(tiny_models, tmp_path, capsys):
    """The job's own manifest is skipped, not an error row; a loop and a file of 20 GiB (sparse)
    are a row each, with the service's body limit; the images are classified."""
    batch("generate", "--per-class", "1", "--class", "Sneaker", "Bag", "--out", tmp_path / "made", "--model",
          tiny_models["generator"], "--runtime", "tensorflow", "--no-progress")
    made = tmp_path / "made"
    (made / "Bag" / "loop").symlink_to("..")
    with (made / "Bag" / "huge.png").open("wb") as file:
        file.truncate(20 * 2**30)
    capsys.readouterr()
    batch("classify", made, "--out", tmp_path / "labels.jsonl", "--model", tiny_models["classifier"],
          "--runtime", "tensorflow", "--no-progress")
    summary = capsys.readouterr().out
    assert "4 images in" in summary and "2 errors, 1 files skipped" in summary  # skipped: manifest.jsonl
    rows = {str(Path(row["path"]).relative_to(made)): row for row in rows_of(tmp_path / "labels.jsonl")}
    assert sorted(rows) == ["Bag/0.png", "Bag/huge.png", "Bag/loop", "Sneaker/0.png"]
    assert rows["Bag/loop"]["error"] == f"a symlink loop: a link to {made}, a folder already listed"
    assert rows["Bag/huge.png"]["error"] == (f"the file is 21,474,836,480 bytes, more than the limit of "
                                            f"{Settings().max_body_bytes:,} bytes (max_body_bytes)")
    assert rows["Bag/0.png"]["label"] and rows["Sneaker/0.png"]["label"]


@pytest.mark.slow
def test_classify_refuses_a_version_the_engine_does_not_serve(tiny_models, tmp_path, capsys):
    from service.batch.models import resolve
    from service.kinds import Classifier

    engine, _ = served(Classifier, tiny_models["classifier"])
    try:
        assert resolve(engine, Classifier, parse("classifier:1")).info.version == "1"
        with pytest.raises(ModelArgumentError, match="classifier:7: classifier:7: version 7 is not available"):
            resolve(engine, Classifier, parse("classifier:7"))
    finally:
        engine.close()
    assert main(["classify", str(tmp_path), "--out", str(tmp_path / "o.csv"), "--model", "classifier@prod"]) == 2
    refused = capsys.readouterr().err  # a label no model has: refused with the reference named
    assert refused.startswith("error: ") and "classifier@prod" in refused and "Traceback" not in refused


@pytest.mark.slow
def test_classify_takes_a_model_store_tag(server_env, archive, tmp_path):
    """`--model classifier:1` from the BentoML store that training.publish filled."""
    result = subprocess.run([*BATCH, "classify", str(archive / "shirts"), "--out", str(tmp_path / "o.jsonl"),
                             "--model", "classifier:1", "--no-progress"], env=server_env, cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_of(tmp_path / "o.jsonl")
    assert len(rows) == 60 and {(row["model"], row["version"], row["error"]) for row in rows} == {("classifier", "1", None)}


@pytest.mark.slow
def test_generate_writes_an_image_folder_that_is_the_same_however_it_is_split(tiny_models, tmp_path):
    from service.kinds import Generator
    from training.data import load_dataset

    model_dir = tiny_models["generator"]
    batch("generate", "--per-class", "6", "--seed", "5", "--out", tmp_path / "all", "--model", model_dir,
          "--runtime", "litert", "--part-size", "16")
    manifest = rows_of(tmp_path / "all" / "manifest.jsonl")
    assert len(manifest) == 60 and len({row["path"] for row in manifest}) == 60
    engine, model = served(Generator, model_dir)
    try:
        for row in manifest[::7]:
            png = (tmp_path / "all" / row["path"]).read_bytes()
            assert hashlib.sha256(png).hexdigest() == row["sha256"]
            assert row["path"] == f"{class_folder(row['class'])}/{row['index']}.png"
            assert row["seed"] == generate.block_seed(5, row["class_id"], row["index"] // 64)
            # The service gives the same image for the row's seed and class, at the row's place.
            again = asyncio.run(model.generate(count=64, seed=row["seed"], class_=row["class_id"]))
            place = row["seed_row"]
            assert np.array_equal(np.asarray(Image.open(tmp_path / "all" / row["path"])), again.images[place, ..., 0])
            assert np.array_equal(np.float32(row["latent"]), again.latents[place])
    finally:
        engine.close()
    # Two classes, in other parts: the same files, byte for byte.
    batch("generate", "--per-class", "6", "--seed", "5", "--class", "Sneaker", "0", "--out", tmp_path / "two",
          "--model", model_dir, "--runtime", "litert", "--part-size", "5")
    two = rows_of(tmp_path / "two" / "manifest.jsonl")
    assert {row["class"] for row in two} == {"Sneaker", "T-shirt/top"}
    for row in two:
        assert (tmp_path / "two" / row["path"]).read_bytes() == (tmp_path / "all" / row["path"]).read_bytes()
    # The layout training.classifier --data DIR reads, with the class names back.
    folder = load_dataset(str(tmp_path / "two"), "train", image_size=28)
    assert sorted(class_name(name) for name in folder.class_names) == ["Sneaker", "T-shirt/top"]


@pytest.mark.slow
def test_shards_together_give_the_whole_job(tiny_models, archive, tmp_path):
    model_dir = tiny_models["classifier"]
    common = ["--model", model_dir, "--runtime", "litert", "--part-size", "10", "--no-progress"]
    batch("classify", archive, "--out", tmp_path / "all.jsonl", *common)
    for shard in ("0/2", "1/2"):
        batch("classify", archive, "--out", tmp_path / "out.jsonl", "--shard", shard, *common)
    first, second = rows_of(tmp_path / "out-0-of-2.jsonl"), rows_of(tmp_path / "out-1-of-2.jsonl")
    assert [len(first), len(second)] == [34, 30]  # parts 0, 2, 4, 6 and 1, 3, 5 of 10 rows (the last one 4)
    merged = []
    for part in range(7):
        merged += (first if part % 2 == 0 else second)[part // 2 * 10:part // 2 * 10 + 10]
    assert merged == rows_of(tmp_path / "all.jsonl")


# -- killed mid-job -------------------------------------------------------------------------------------


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([*BATCH, *map(str, args), "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(*args: str | Path) -> str:
    result = subprocess.run([*BATCH, *map(str, args), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout + result.stderr


def kill_when_logged(process: subprocess.Popen, parts: Path, count: int) -> None:
    """SIGKILL the job once `count` parts are logged (it is then blocked on the FIFO)."""
    try:
        assert eventually(lambda: len(list(parts.glob("*.jsonl"))) >= count or process.poll() is not None,
                          timeout=TIMEOUT_S), "the job logged nothing"
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert len(list(parts.glob("*.jsonl"))) == count  # blocked: it cannot get further
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -9


@pytest.mark.slow
def test_classify_killed_mid_job_resumes_with_no_row_lost_or_twice(tiny_models, archive, tmp_path):
    files = list_files(str(archive)).files
    blocker = tmp_path / "late.png"
    blocker.write_bytes((archive / "shirts" / "003.png").read_bytes())
    (tmp_path / "list.txt").write_text("\n".join([*files[:22], str(blocker), *files[22:]]) + "\n")
    out = tmp_path / "out.parquet"
    common = ["--out", out, "--model", tiny_models["classifier"], "--runtime", "litert", "--part-size", "4"]
    # A FIFO where part 4 is written (a listed FIFO is a row's error, never a wait): writing it
    # blocks while parts 0-3 are logged and part 5 is in flight.
    parts = tmp_path / "out.parquet.job" / "parts"
    parts.mkdir(parents=True)
    os.mkfifo(parts / ".000004.jsonl.tmp")
    kill_when_logged(start("classify", tmp_path / "list.txt", *common), parts, 4)
    assert not out.exists()
    (parts / ".000004.jsonl.tmp").unlink()
    assert "49 images in" in finish("classify", tmp_path / "list.txt", *common)  # 65 less the 16 logged
    (tmp_path / "clean").mkdir()
    finish("classify", tmp_path / "list.txt", *common[:1], tmp_path / "clean" / "out.parquet", *common[2:])
    rows = rows_of(out)
    assert rows == rows_of(tmp_path / "clean" / "out.parquet")
    assert [row["path"] for row in rows] == [*files[:22], str(blocker), *files[22:]]
    assert not (tmp_path / "out.parquet.job").exists()


@pytest.mark.slow
def test_generate_killed_mid_job_resumes_with_the_same_images(tiny_models, tmp_path):
    out = tmp_path / "out"
    (out / "Trouser").mkdir(parents=True)
    os.mkfifo(out / "Trouser" / "1.png")  # item 9 of 16: writing it blocks in part 2, after parts 0-1 are logged
    common = ["--per-class", "8", "--class", "0", "1", "--seed", "11", "--model", tiny_models["generator"],
              "--runtime", "litert", "--part-size", "4"]
    kill_when_logged(start("generate", *common, "--out", out), out / ".job" / "parts", 2)
    assert not (out / "manifest.jsonl").exists()
    (out / "Trouser" / "1.png").unlink()
    assert "8 images in" in finish("generate", *common, "--out", out)
    finish("generate", *common, "--out", tmp_path / "clean")
    manifest = rows_of(out / "manifest.jsonl")
    assert manifest == rows_of(tmp_path / "clean" / "manifest.jsonl")
    assert len({row["path"] for row in manifest}) == 16
    for row in manifest:
        assert (out / row["path"]).read_bytes() == (tmp_path / "clean" / row["path"]).read_bytes()
    assert not (out / ".job").exists()


# -- a real Ray cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on loopback (a head and a worker, one CPU each, no dashboard), started
    from this process and shut down by it: a model replica per node, one actor each."""
    try:
        from ray import cluster_utils
    except ImportError:
        unavailable("ray is not installed: make install (the ray extra)")
    # Inherited by the nodes, their workers and the driver (a subprocess). Ray rewrites a loopback
    # address to the machine's own IP unless it is told this is a one-machine cluster (its default
    # on macOS and Windows): every process stays on 127.0.0.1. The workers import this checkout,
    # as every node of a real cluster has the project installed (its image).
    # RAY_TMPDIR: every Ray file (sessions, sockets, the "current cluster" address file that
    # add_node writes under Ray's default folder) goes below a folder of this test's own, so the
    # test needs no Ray folder left by an earlier run, nor shares one another cluster may remove
    # (#30). Short: Ray's socket paths must stay under AF_UNIX's 107 bytes.
    # Ray Data waits for the whole actor pool before it hands out batches: otherwise the first
    # actor up may compute them all, and nothing would show that two nodes did the work.
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    environ = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT),
               "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_TMPDIR": str(temp), "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}
    saved = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    cluster = cluster_utils.Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(**node, include_dashboard=False)
        cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=120)
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_output_equals_in_process_output(ray_cluster, tiny_models, archive, tmp_path):
    assert ray_cluster.address.startswith("127.0.0.1:")
    on_ray = ["--engine", "ray", "--address", ray_cluster.address, "--actors", "2", "--part-size", "8",
              "--runtime", "litert"]
    finish("classify", archive, "--out", tmp_path / "ray.parquet", "--model", tiny_models["classifier"], *on_ray)
    batch("classify", archive, "--out", tmp_path / "local.parquet", "--model", tiny_models["classifier"],
          "--runtime", "litert")
    assert rows_of(tmp_path / "ray.parquet") == rows_of(tmp_path / "local.parquet")

    generate = ["generate", "--per-class", "5", "--seed", "3", "--model", tiny_models["generator"]]
    generated = finish(*generate, "--out", tmp_path / "ray", *on_ray)
    batch(*generate, "--out", tmp_path / "local", "--runtime", "litert")
    manifest = rows_of(tmp_path / "ray" / "manifest.jsonl")
    assert manifest == rows_of(tmp_path / "local" / "manifest.jsonl") and len(manifest) == 50
    for row in manifest:
        assert (tmp_path / "ray" / row["path"]).read_bytes() == (tmp_path / "local" / row["path"]).read_bytes()

    # Two actors, one on each of the cluster's nodes, computed those 50 images between them.
    work = {(actor, node): int(count.replace(",", "")) for count, actor, node in
            re.findall(r"^ray: ([\d,]+) images by actor (\w+) on node (\w+)$", generated, re.MULTILINE)}
    assert sum(work.values()) == 50, generated[-3000:]
    assert len(work) == 2 and all(work.values()), work
    assert {node for _, node in work} == {node.node_id for node in ray_cluster.list_all_nodes()}, work

"""Build diptych's container image with nothing pulled from a registry (`make image` runs this).

    .venv/bin/python deploy/image/build.py --models models --tag diptych:0.1.0
    .venv/bin/python deploy/image/build.py --base-only

Four steps, each cached so that a rebuild takes seconds:

1. Base image `diptych-base:bookworm`: Debian bookworm `minbase` with python3 (3.11, as the
   project) and tini, made by debootstrap and `docker import`, since no base image can be
   pulled. The root file system is cached as a tarball; the mirror is `DEBIAN_MIRROR` or the
   host's own apt source for bookworm.
2. Wheelhouse: every pinned dependency of pyproject.toml as wheels, fetched once by the
   host's pip into the cache. The build installs from it with `--no-index` and runs with
   `--network none`: the image build itself never touches a network.
3. Models: `training.publish` imports each registered kind's default model (`<models>/<name>/`
   for its default tag `<name>:latest`: the classifier and the generator) into a scratch
   BentoML store, with each one's verified LiteRT conversion (calibrated on the host, where
   the datasets are); that store's `models/` folder becomes the image's store, so the
   service's defaults find them and nothing converts at start.
4. `docker build -f deploy/Dockerfile` with the repository as context (.dockerignore admits
   only the sources and the staging folder).

The cache is `DIPTYCH_CACHE`, else /var/cache/diptych as root, else ~/.cache/diptych.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "diptych-base:bookworm"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "tini")  # minbase has the rest (libc, libstdc++, passwd for useradd)
PIP = "pip==26.3"  # the Makefile's pip: it installs the wheelhouse inside the build
# What the base build removes from the root file system: package lists, caches, docs (but
# not the copyright files), man pages, translations. Part of the cache key: edit it, rebuild.
BASE_CLEANUP = ("var/lib/apt/lists/*", "var/cache/apt/*", "var/cache/debconf/*-old", "var/log/*",
                "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "etc/hostname", "etc/resolv.conf")


def cache_dir() -> Path:
    if configured := os.environ.get("DIPTYCH_CACHE"):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/diptych")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diptych"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def docker_client() -> str:
    """A docker client that builds with BuildKit: `DOCKER`, else the first `docker` on PATH
    that has buildx or is older than 23 (which had BuildKit built in); Debian's docker.io
    client is the second kind, a newer client without the buildx plugin is neither."""
    if configured := os.environ.get("DOCKER"):
        return configured
    candidates = [path for directory in os.environ.get("PATH", "").split(os.pathsep)
                  if os.access(path := os.path.join(directory, "docker"), os.X_OK)]
    for client in dict.fromkeys(candidates):
        if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
            return client
        version = subprocess.run([client, "--version"], capture_output=True, text=True).stdout
        if (major := re.search(r"version (\d+)\.", version)) and int(major.group(1)) < 23:
            return client
    raise SystemExit("no docker client that can build with BuildKit: install docker.io (Debian) or the buildx "
                     "plugin, or name one in DOCKER")


# --- 1. the base image ------------------------------------------------------------------------


def debian_mirror() -> str:
    """`DEBIAN_MIRROR`, else the host's apt source that serves bookworm's main component."""
    if configured := os.environ.get("DEBIAN_MIRROR"):
        return configured
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):  # deb822 stanzas
        for stanza in Path(path).read_text().split("\n\n"):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split() \
                    and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        for line in Path(path).read_text().splitlines() if os.path.exists(path) else []:
            if match := re.match(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s+.*\bmain\b", line):
                return match.group(1)
    raise SystemExit(f"no apt source for Debian {SUITE} on this host: set DEBIAN_MIRROR to a Debian mirror URL")


def base_rootfs(cache: Path) -> Path:
    """The base root file system as a tarball in the cache: debootstrap once, then reuse."""
    recipe = hashlib.sha256(repr((SUITE, BASE_PACKAGES, BASE_CLEANUP)).encode()).hexdigest()[:12]
    tarball = cache / "base" / f"{SUITE}-minbase-{recipe}.tar"
    if tarball.is_file():
        return tarball
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise SystemExit("building the base image needs root and debootstrap (apt-get install debootstrap): "
                         "run `sudo make base-image` once")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
             debian_mirror()], stdout=subprocess.DEVNULL)
        for pattern in BASE_CLEANUP:
            for path in glob.glob(str(rootfs / pattern)):
                _remove(Path(path))
        for doc in (rootfs / "usr/share/doc").iterdir():  # keep each package's copyright only
            for item in doc.iterdir() if doc.is_dir() and not doc.is_symlink() else []:
                if item.name != "copyright":
                    _remove(item)
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)
    return tarball


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def ensure_base(docker: str, cache: Path) -> None:
    """Import the cached root file system unless the engine has this very base already."""
    tarball = base_rootfs(cache)
    have = subprocess.run([docker, "image", "inspect", "--format", '{{index .Config.Labels "diptych.base.recipe"}}',
                           BASE_IMAGE], capture_output=True, text=True)
    if have.returncode == 0 and have.stdout.strip() == tarball.stem:
        return
    run([docker, "import", "--change", f"LABEL diptych.base.recipe={tarball.stem}",
         "--change", 'CMD ["/bin/bash"]', str(tarball), BASE_IMAGE], stdout=subprocess.DEVNULL)


# --- 2. the wheelhouse ------------------------------------------------------------------------


def requirements() -> list[str]:
    """The project's pinned dependencies, exactly as pyproject.toml lists them."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def wheelhouse(cache: Path) -> Path:
    """Wheels of every dependency (and of pip), fetched once per set of pins by the host's pip."""
    pins = sorted(requirements())
    key = hashlib.sha256("\n".join([PIP, *pins]).encode()).hexdigest()[:12]
    folder = cache / "wheels" / key
    if (folder / "requirements.txt").is_file():
        return folder
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(partial), PIP, *pins])
    (partial / "requirements.txt").write_text("\n".join(pins) + "\n")  # written last: marks it complete
    partial.rename(folder)
    return folder


# --- 3. the models ----------------------------------------------------------------------------


def default_models(models: Path) -> list[Path]:
    """The folder in `models` of each registered kind's default model: named as its store tag
    (`classifier:latest` → models/classifier). Imported here, not above: the tests load this
    script for its docker helpers only."""
    from service.kinds import registered

    return [models / kind.default_model.split(":")[0] for kind in registered().values() if kind.default_model]


def publish_models(models: Path, store: Path) -> None:
    """`training.publish` every registered kind's default model into a scratch store at `store`."""
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run([sys.executable, "-m", "training.publish", *map(str, default_models(models))], env=env, cwd=ROOT)


# --- 4. the image -----------------------------------------------------------------------------


def stage(stage_dir: Path, wheels: Path, models: Path) -> None:
    """Fill `stage_dir` (inside the repository, the build context) with the wheelhouse (hard
    links where the file system allows) and the published model store."""
    shutil.rmtree(stage_dir, ignore_errors=True)
    shutil.copytree(wheels, stage_dir / "wheels", copy_function=_link_or_copy)
    publish_models(models, stage_dir / "bentoml")
    for path in (stage_dir / "bentoml" / "models").rglob("*"):  # the store writes 0600: the image's user reads
        path.chmod(0o755 if path.is_dir() else 0o644)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_image(docker: str, tags: list[str], stage_dir: Path) -> None:
    """`docker build` with no network at all: everything it needs is in the context."""
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    build_args = {"BASE_IMAGE": BASE_IMAGE, "STAGE": stage_dir.relative_to(ROOT).as_posix(), "VERSION": project_version(),
                  "REVISION": revision.stdout.strip() or "unknown",
                  "CREATED": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    command = [docker, "build", "--network", "none", "--file", str(ROOT / "deploy" / "Dockerfile")]
    for tag in tags:
        command += ["--tag", tag]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    run([*command, str(ROOT)], env={**os.environ, "DOCKER_BUILDKIT": "1"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models",
                        help="folder with a folder per kind's default model, named as its tag: classifier/, "
                             "generator/ (version folders, or folders of versions)")
    parser.add_argument("--tag", action="append", dest="tags",
                        help="image name and tag, repeatable (default: diptych:<version> and diptych:latest)")
    parser.add_argument("--stage", type=Path, default=ROOT / ".cache" / "image",
                        help="staging folder inside the repository (the build context)")
    parser.add_argument("--base-only", action="store_true", help="make the base image and stop")
    args = parser.parse_args(argv)
    docker, cache = docker_client(), cache_dir()
    ensure_base(docker, cache)
    if args.base_only:
        return
    stage_dir = args.stage.resolve()
    if not stage_dir.is_relative_to(ROOT):
        raise SystemExit(f"--stage must be inside the repository (the build context): {stage_dir}")
    stage(stage_dir, wheelhouse(cache), args.models.resolve())
    tags = args.tags or [f"diptych:{project_version()}", "diptych:latest"]
    build_image(docker, tags, stage_dir)
    print(f"built {', '.join(tags)}")


if __name__ == "__main__":
    main()

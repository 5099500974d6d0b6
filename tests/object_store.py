"""A real S3 endpoint on loopback for the object-storage source's tests: moto's server
(`moto_server`, PyPI `moto[server]`), a bucket made with boto3 (s3fs's mkdir sends a location
constraint moto refuses), and uploads of version folders the way a rollout makes them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import eventually, free_port, unavailable

BUCKET = "diptych-models"
CARD = "model_card.json"


class S3:
    def __init__(self, port: int, log: Path) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        # What the service reads, as any AWS client does: the standard variables.
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.endpoint}
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                         "-p", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")

    def url(self, *parts: object) -> str:
        return "/".join([f"s3://{BUCKET}", *map(str, parts)])

    def upload(self, folder: Path, prefix: str, card: bool = True, only: int | None = None) -> None:
        """The version folder's files under `prefix`, its card last (`card=False`: not at all);
        `only`: the first that many files alone, as an upload cut short."""
        files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != CARD)
        for path in files[:only]:
            self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
        if card and only is None:
            self.client.upload_file(str(folder / CARD), BUCKET, f"{prefix}/{CARD}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def _up(s3: S3) -> bool:
    assert s3.process.poll() is None, "moto_server exited"
    try:
        s3.client.list_buckets()
    except Exception:  # noqa: BLE001 - not listening yet
        return False
    return True


@contextlib.contextmanager
def s3_endpoint(folder: Path) -> Iterator[S3]:
    """A running moto S3 server with the bucket made; stopped at the end."""
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as error:
        unavailable(f"{error.name} is not installed: pip install -e '.[dev]' (moto[server], boto3, s3fs)")
    s3 = S3(free_port(), folder / "moto.log")
    try:
        assert eventually(lambda: _up(s3), 60), (folder / "moto.log").read_text()[-2000:]
        s3.client.create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        s3.stop()

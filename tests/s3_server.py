"""A real S3 API on loopback for tests: `moto_server` (the `moto[server]` dev dependency).

    from s3_server import start_s3_server   # tests/ is on sys.path under pytest

    with start_s3_server(tmp_path) as s3:    # ready when this returns
        s3.upload_tree(SAMPLES, "s3://fusion/samples")
        pairs = discover_pairs("s3://fusion/samples", "ivf")

`s3.env` holds what every S3 client of adaray reads, as on a real cluster: AWS_ENDPOINT_URL,
test credentials and a region. `s3.activate()` puts it into this process's environment (and
restores the old values on exit); child processes and Ray workers get it by inheritance.
`stop()` ends exactly the process it started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ray_cluster import free_port

__all__ = ["S3Server", "start_s3_server"]


class S3Server:
    """`moto_server` on 127.0.0.1:`port`; its objects live in memory until `stop()`."""

    def __init__(self, log_path: Path, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "adaray-test",
                    "AWS_SECRET_ACCESS_KEY": "adaray-test-secret", "AWS_REGION": "us-east-1",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        server = Path(sys.executable).parent / "moto_server"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p",
                                             str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start:\n"
                                       f"{self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    @contextlib.contextmanager
    def activate(self) -> Iterator[S3Server]:
        """This server's endpoint and credentials in os.environ for the duration."""
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        try:
            yield self
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def filesystem(self):  # -> pyarrow.fs.S3FileSystem
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint,
                                       access_key=self.env["AWS_ACCESS_KEY_ID"],
                                       secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                       region=self.env["AWS_REGION"], scheme="http",
                                       allow_bucket_creation=True)

    def create_bucket(self, bucket: str) -> None:
        self.filesystem().create_dir(bucket)

    def put(self, uri: str, data: bytes) -> None:
        """Write one object (`s3://bucket/key`)."""
        with self.filesystem().open_output_stream(uri.removeprefix("s3://")) as stream:
            stream.write(data)

    def upload_tree(self, folder: Path, uri: str) -> int:
        """Copy every file under `folder` to the prefix `uri`; returns the file count."""
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{uri.rstrip('/')}/{path.relative_to(folder).as_posix()}",
                         path.read_bytes())
                count += 1
        return count

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3_server(tmp_dir: Path) -> S3Server:
    """A running moto_server on a free loopback port (log in `tmp_dir`)."""
    server = S3Server(tmp_dir / "moto-server.log", free_port())
    server.start()
    return server

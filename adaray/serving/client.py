"""The HTTP client of the Serve app's POST /fuse (`adaray fuse --url`, the demo, benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from adaray.data.location import Location
from adaray.errors import RequestError

DEFAULT_TOKEN_ENV = "ADARAY_SERVE_TOKEN"  # where `adaray fuse --url` looks for a bearer token


def post_fuse(url: str, path_a: str | Path | Location, path_b: str | Path | Location, task: str,
              output: str = "png", timeout: float = 300.0, route_wait_s: float = 0.0,
              token: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Send two image files to POST /fuse and return (body, headers).

    `token` is sent as `Authorization: Bearer <token>` (an app with `auth_token_env`).
    Raises RequestError with the server's status and reason when it refuses the request.
    `route_wait_s` retries, for that long, while a Serve proxy answers 404 "Path ... not
    found": on a multi-node cluster each node's proxy learns the app's routes a moment after
    `serve.run` returns.
    """
    import requests

    files = {name: (Location.of(p).name, Location.of(p).read_bytes())
             for name, p in (("a", path_a), ("b", path_b))}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + route_wait_s
    while True:
        try:
            response = requests.post(f"{url.rstrip('/')}/fuse", params={"task": task,
                                                                        "output": output},
                                     files=files, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            raise RequestError(503, f"cannot reach {url}: {exc}") from None
        if response.status_code == 200:
            return response.content, dict(response.headers)
        try:
            reason = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:500]
        unrouted = response.status_code == 404 and reason.startswith("Path ")
        if not unrouted or time.monotonic() >= deadline:
            raise RequestError(response.status_code, reason)
        time.sleep(0.5)

"""The Serve app exposed to callers it cannot trust, over real HTTP on loopback, on the
session's two-node cluster: bearer-token auth, limits applied before work (body size, image
headers, time per request, requests held), a fuzz of malformed requests, and Ray's Prometheus
metrics of the app.

One module fixture deploys two apps of one tiny ivf model: `guarded` at / (auth on, small
limits) and `open` at /open (no auth). The token is in the environment the session's Ray nodes
started with (ray_cluster.SERVE_TOKEN_ENV), as a deployment exports it where its nodes start.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from ray_cluster import SERVE_TOKEN_ENV, RayTestCluster, free_port, wait_for
from test_serve import sample_pair, tiny_model

from adaray.checkpoint import MODEL_FILENAME, save_model
from adaray.cli import main
from adaray.config import ConfigError
from adaray.data.io import ImageReadError, image_dimensions
from adaray.runtime import ray_runtime_env
from adaray.serving import ServeConfig

LIMITS = {"max_request_bytes": 2 * 1024 * 1024, "request_timeout_s": 4.0,
          "max_queued_requests": 3, "max_pixels": 640 * 640}
SERVE_TIMEOUT = pytest.mark.timeout(300)


class App:
    """A deployed app: base URL and port; `post` sends the session token unless told not to."""

    def __init__(self, url: str, port: int, token: str | None) -> None:
        self.url, self.port, self.token = url, port, token

    def headers(self, token: str | None = "session") -> dict[str, str]:
        token = self.token if token == "session" else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, token: str | None = "session", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        return requests.post(f"{self.url}/fuse", params=kwargs.pop("params", {"task": "ivf"}),
                             headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def apps(ray_cluster: RayTestCluster, tmp_path_factory) -> Any:
    from ray import serve

    from adaray.serving.app import build_application

    root = tmp_path_factory.mktemp("serve-limits")
    model = str(save_model(root / "ivf" / MODEL_FILENAME, tiny_model(1)))
    base = {"tasks": ["ivf"], "models": {"ivf": model}, "workdir": str(root / "work")}
    small = {"FusionModels": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
             "FusionAPI": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}}
    port = free_port()
    with ray_cluster.driver(runtime_env=ray_runtime_env()):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build_application({**base, **LIMITS, "auth_token_env": SERVE_TOKEN_ENV},
                                        small), name="guarded", route_prefix="/")
            serve.run(build_application(base, small), name="open", route_prefix="/open")
            url = f"http://127.0.0.1:{port}"
            yield {"guarded": App(url, port, os.environ[SERVE_TOKEN_ENV]),
                   "open": App(f"{url}/open", port, None)}
        finally:
            serve.shutdown()


def _pair_files(name_a: str = "a.png", name_b: str = "b.png") -> dict[str, Any]:
    a, b = sample_pair("ivf")
    return {"a": (name_a, a.read_bytes()), "b": (name_b, b.read_bytes())}


def _json_error(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


# ----------------------------------------------------------------------------- units


def _tiff_header(order: str, big: bool, width: int, height: int, kind: int) -> bytes:
    """A TIFF holding just an image directory with width and height (tags 256, 257)."""
    sig = (b"II" if order == "little" else b"MM") + (43 if big else 42).to_bytes(2, order)
    entry_size, count_size, word = (20, 8, 8) if big else (12, 2, 4)
    start = sig + ((8).to_bytes(2, order) + (0).to_bytes(2, order) if big else b"")
    ifd = len(start) + word
    head = start + ifd.to_bytes(word, order) + (2).to_bytes(count_size, order)
    value_size = {3: 2, 4: 4, 16: 8}[kind]
    for tag, value in ((256, width), (257, height)):
        head += (tag.to_bytes(2, order) + kind.to_bytes(2, order) + (1).to_bytes(word, order)
                 + value.to_bytes(value_size, order).ljust(word, b"\0"))
    assert len(head) == ifd + count_size + 2 * entry_size
    return head + b"\0" * word


def test_image_dimensions_come_from_headers_without_decoding():
    rng = random.Random(0)
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        for shape in ((37, 53), (37, 53, 3)):
            data = cv2.imencode(ext, np.zeros(shape, np.uint8))[1]
            assert image_dimensions(data.tobytes(), ext) == (53, 37), ext
    data = cv2.imencode(".png", np.zeros((300, 1000), np.uint16))[1]
    assert image_dimensions(data.tobytes(), "16-bit") == (1000, 300)
    assert image_dimensions(_png_claiming(100_000, 100_000), "bomb") == (100_000, 100_000)
    for order in ("little", "big"):
        for big, kind in ((False, 3), (False, 4), (True, 16)):
            width = 7_000 if kind == 3 else 70_000  # SHORT or LONG/LONG8 values
            header = _tiff_header(order, big, width, 321, kind)
            assert image_dimensions(header, "tiff") == (width, 321), (order, big, kind)
    core_bmp = b"BM" + bytes(12) + (12).to_bytes(4, "little") + (640).to_bytes(2, "little") \
        + (480).to_bytes(2, "little") + bytes(4)
    assert image_dimensions(core_bmp, "core.bmp") == (640, 480)
    with pytest.raises(ImageReadError, match=r"x\.png: empty file"):
        image_dimensions(b"", "x.png")
    with pytest.raises(ImageReadError, match="not PNG, JPEG, BMP or TIFF data"):
        image_dimensions(b"GIF89a" + rng.randbytes(64), "x.gif")
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1]
    start = jpeg.tobytes().index(b"\xff\xc0")
    with pytest.raises(ImageReadError, match="truncated or corrupt JPEG"):
        image_dimensions(jpeg.tobytes()[:start + 4], "cut.jpg")
    with pytest.raises(ImageReadError, match="truncated or corrupt PNG"):
        image_dimensions(_png_claiming(8, 8)[:20], "cut.png")


def test_serve_config_checks_auth_and_limits(monkeypatch):
    with pytest.raises(ConfigError, match="auth_token_env: 'Bearer abc' is not an environment"):
        ServeConfig(auth_token_env="Bearer abc")
    for field, value in (("request_timeout_s", 0), ("max_request_bytes", 0),
                         ("max_queued_requests", 0)):
        with pytest.raises(ConfigError, match=field):
            ServeConfig(**{field: value})
    monkeypatch.delenv("ADARAY_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="environment variable ADARAY_UNSET_TOKEN is not set"):
        ServeConfig(auth_token_env="ADARAY_UNSET_TOKEN").bearer_token()
    monkeypatch.setenv("ADARAY_UNSET_TOKEN", "s3cret")
    assert ServeConfig(auth_token_env="ADARAY_UNSET_TOKEN").bearer_token() == "s3cret"
    assert ServeConfig().bearer_token() is None

    from adaray.serving.app import build_application

    with pytest.raises(ConfigError, match=r"FusionAPI.max_ongoing_requests \(8\) must be above "
                                          r"args.max_queued_requests \(8\)"):
        build_application({"max_queued_requests": 8}, {"FusionAPI": {"max_ongoing_requests": 8}})


# ----------------------------------------------------------------------------- auth


@SERVE_TIMEOUT
def test_bearer_token_guards_every_path_but_healthz(apps, ray_cluster, tmp_path,
                                                     capsys):
    guarded = apps["guarded"]
    missing = guarded.post(token=None, files=_pair_files())
    assert missing.status_code == 401, missing.text
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "missing bearer token" in _json_error(missing)
    basic = guarded.post(token=None, files=_pair_files(), headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    wrong = guarded.post(token=guarded.token[:-1] + "x", files=_pair_files())
    assert wrong.status_code == 403 and _json_error(wrong) == "invalid bearer token"
    assert guarded.token not in wrong.text
    for path in ("/models", "/docs", "/openapi.json"):
        assert requests.get(f"{guarded.url}{path}", timeout=30).status_code == 401, path
        assert requests.get(f"{guarded.url}{path}", headers=guarded.headers(),
                            timeout=30).status_code == 200, path
    health = requests.get(f"{guarded.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ok = guarded.post(files=_pair_files())
    assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG"), ok.text
    assert apps["open"].post(token=None, files=_pair_files()).status_code == 200

    # `adaray fuse --url` sends the token of its --token-env variable, and none without it.
    a, b = sample_pair("ivf")
    command = ["fuse", str(a), str(b), "--task", "ivf", "--url", guarded.url,
               "-o", str(tmp_path / "fused.png")]
    assert main([*command, "--token-env", "ADARAY_NO_SUCH_TOKEN"]) == 1
    assert "(HTTP 401): missing bearer token" in capsys.readouterr().err
    assert main([*command, "--token-env", SERVE_TOKEN_ENV]) == 0
    assert (tmp_path / "fused.png").read_bytes().startswith(b"\x89PNG")

    # The token is in no log of the cluster (Serve access logs, replica and proxy logs).
    logged = [p for p in (ray_cluster.session_dir / "logs").rglob("*")
              if p.is_file() and guarded.token.encode() in p.read_bytes()]
    assert not logged, f"token found in {logged}"


# ----------------------------------------------------------------------------- limits


def _raw_exchange(port: int, head: str, body: bytes = b"", wait_s: float = 20.0,
                  keep: list[socket.socket] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, no blank line) and `body` over a plain socket,
    then read one response: (status, headers, body). With `keep`, the socket is left open
    there (a client still uploading) and the response is not read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    if keep is not None:
        keep.append(sock)
        return 0, {}, b""
    data = b""
    with sock:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_text, _, rest = data.partition(b"\r\n\r\n")
        lines = header_text.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


PART_START = b'--x\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\n\r\n'


def _fuse_head(app: App, length: int | None, boundary: str = "x") -> str:
    lines = ["POST /fuse?task=ivf HTTP/1.1", "Host: 127.0.0.1",
             f"Authorization: Bearer {app.token}",
             f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    return "\r\n".join(lines)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (valid CRC) claims width x height, with a few bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


@SERVE_TIMEOUT
def test_limits_refuse_before_work(apps):
    guarded = apps["guarded"]
    limit = LIMITS["max_request_bytes"]
    # A declared body above the limit: 413 at once, without sending (or reading) the body.
    started = time.monotonic()
    status, _, body = _raw_exchange(guarded.port, _fuse_head(guarded, 10**9))
    assert status == 413 and b"larger than the limit" in body, body
    assert time.monotonic() - started < 10
    # A chunked body (a file part that never ends) growing past the limit while it streams in.
    chunk = b"y" * 65536
    stream = b"".join(f"{len(data):x}\r\n".encode() + data + b"\r\n"
                      for data in [PART_START, *[chunk] * (limit // len(chunk) + 2)])
    status, _, body = _raw_exchange(guarded.port, _fuse_head(guarded, None), stream)
    assert status == 413 and b"max_request_bytes" in body, body
    # A small PNG that claims 100000 x 100000 pixels: refused from its header.
    bomb = _png_claiming(100_000, 100_000)
    response = guarded.post(files={"a": ("bomb.png", bomb), "b": ("bomb.png", bomb)})
    assert response.status_code == 413, response.text
    assert "100000x100000 is 10000000000 pixels" in _json_error(response)
    # A client that stops sending mid-body: 504 once request_timeout_s has passed.
    started = time.monotonic()
    status, _, body = _raw_exchange(guarded.port, _fuse_head(guarded, 5000), PART_START)
    waited = time.monotonic() - started
    assert status == 504 and b"request_timeout_s" in body, body
    assert LIMITS["request_timeout_s"] - 0.5 < waited < LIMITS["request_timeout_s"] + 10
    # max_queued_requests uploads held open: the next request gets 503 with Retry-After.
    held: list[socket.socket] = []
    try:
        for _ in range(LIMITS["max_queued_requests"]):
            _raw_exchange(guarded.port, _fuse_head(guarded, 5000), PART_START,
                         keep=held)
        busy = guarded.post(files=_pair_files())
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "1"
        assert "max_queued_requests" in _json_error(busy)
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: guarded.post(files=_pair_files()).status_code == 200, 20,
             what="a fused request once the held uploads are gone")


# ----------------------------------------------------------------------------- fuzz


def _image(rng: random.Random, ext: str, size: tuple[int, int] | None = None) -> bytes:
    height, width = size or (rng.randint(8, 48), rng.randint(8, 48))
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (height, width),
                                                                   dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def _corrupted(rng: random.Random) -> tuple[str, bytes]:
    """An image whose structure a decoder must refuse: PNG bytes flipped (its CRCs catch
    every flip), a JPEG without its Huffman tables, a TIFF whose directory points past the
    end."""
    kind = rng.choice(["png", "jpeg", "tiff"])
    if kind == "png":
        data = bytearray(_image(rng, ".png"))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(8, len(data))] ^= rng.randrange(1, 256)
        return "c.png", bytes(data)
    if kind == "jpeg":
        data = _image(rng, ".jpg")
        start = data.index(b"\xff\xc4")
        length = int.from_bytes(data[start + 2 : start + 4], "big")
        return "c.jpg", data[:start] + data[start + 2 + length :]
    data = bytearray(_image(rng, ".tif"))
    data[4:8] = (len(data) + rng.randint(1, 10**6)).to_bytes(4, "little")
    return "c.tif", bytes(data)


FILENAMES = ["../../etc/passwd", "C:\\Windows\\a.png", "名前.png", "ü🙂.tif", "a\u202e.png",
             "/abs/path.png", "..", "", "x" * 2000, "nul\u0000byte.png"]


def _fuzz_cases(app: App, count: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """`count` malformed requests as (category, requests.post kwargs), round robin over the
    categories, from a seeded generator."""
    rng = random.Random(seed)
    good = _image(rng, ".png", (32, 32))

    def random_bytes() -> dict[str, Any]:
        boundary = "".join(rng.choices("abcdefgh0123456789", k=rng.randint(1, 30)))
        return {"data": rng.randbytes(rng.randint(0, 4096)),
                "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}

    def random_parts() -> dict[str, Any]:
        return {"files": {"a": ("a.png", rng.randbytes(rng.randint(1, 2048))),
                          "b": ("b.png", good)}}

    def truncated() -> dict[str, Any]:
        data = _image(rng, rng.choice([".png", ".jpg", ".tif", ".bmp"]))
        return {"files": {"a": ("t.img", data[: rng.randrange(1, len(data))]),
                          "b": ("b.png", good)}}

    def corrupted() -> dict[str, Any]:
        name, data = _corrupted(rng)
        return {"files": {"a": ("a.png", good), "b": (name, data)}}

    def huge_header() -> dict[str, Any]:
        bomb = _png_claiming(100_000 + rng.randrange(1000), 100_000)
        return {"files": {"a": ("bomb.png", bomb), "b": ("b.png", good)}}

    def mismatched() -> dict[str, Any]:
        height, width = rng.randint(8, 40), rng.randint(8, 40)
        return {"files": {"a": ("a.png", _image(rng, ".png", (height, width))),
                          "b": ("b.png", _image(rng, ".png", (height + rng.randint(1, 5),
                                                              width)))}}

    def content_type() -> dict[str, Any]:
        kind = rng.choice(["application/json", "text/plain", "image/png", "",
                           "application/x-www-form-urlencoded", "multipart/mixed; boundary=x",
                           "multipart/form-data", "ÿ/ÿ"])
        return {"data": good, "headers": {"Content-Type": kind}}

    def missing_or_duplicate() -> dict[str, Any]:
        files = rng.choice([[("a", ("a.png", good))], [("b", ("b.png", good))], [],
                            [("a", ("a.png", good)), ("a", ("a.png", good)),
                             ("b", ("b.png", good))],
                            [("a", ("a.png", good)), ("b", ("b.png", good)),
                             ("b", ("b2.png", good))],
                            [("c", ("c.png", good)), ("d", ("d.png", good))]])
        return {"files": files or {"task": (None, "ivf")}}

    def huge_fields() -> dict[str, Any]:
        kind = rng.choice(["field", "many", "body"])
        if kind == "field":  # a text part above Starlette's 1 MiB per field
            return {"files": {"a": ("a.png", good), "b": ("b.png", good),
                              "note": (None, "z" * (1024 * 1024 + rng.randint(1, 1000)))}}
        if kind == "many":  # more text parts than the app parses
            fields = {f"f{i}": (None, "v") for i in range(rng.randint(17, 60))}
            return {"files": {"a": ("a.png", good), "b": ("b.png", good), **fields}}
        return {"files": {"a": ("a.png", good), "b": ("big.png", good + rng.randbytes(
            LIMITS["max_request_bytes"] + rng.randint(1, 10**5)))}}

    def filenames() -> dict[str, Any]:
        return {"files": {"a": (rng.choice(FILENAMES), rng.randbytes(rng.randint(1, 300))),
                          "b": (rng.choice(FILENAMES), good)}}

    categories = {"random bytes body": random_bytes, "random image bytes": random_parts,
                  "truncated PNG/JPEG/TIFF/BMP": truncated,
                  "corrupted PNG/JPEG/TIFF": corrupted, "PNG header 100000x100000": huge_header,
                  "mismatched sizes": mismatched, "wrong content type": content_type,
                  "missing/duplicate parts": missing_or_duplicate,
                  "huge form fields": huge_fields, "unicode/path-like filenames": filenames}
    names = list(categories)
    return [(names[i % len(names)], categories[names[i % len(names)]]()) for i in range(count)]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@SERVE_TIMEOUT
def test_fuzzed_requests_get_json_4xx_and_the_replicas_stay_healthy(apps, ray_cluster):
    guarded = apps["guarded"]
    replicas = {name: ray_cluster.live_actors(f"ServeReplica:guarded:{name}")[0]["pid"]
                for name in ("FusionAPI", "FusionModels")}
    assert guarded.post(files=_pair_files()).status_code == 200  # models loaded before
    before = {name: _rss_mib(pid) for name, pid in replicas.items()}
    cases = _fuzz_cases(guarded, 320)
    statuses: dict[str, Counter] = {}
    started = time.monotonic()
    for category, kwargs in cases:
        response = guarded.post(**kwargs)
        assert 400 <= response.status_code < 500, (category, response.status_code,
                                                   response.text[:300])
        assert response.headers["content-type"] == "application/json", (category, response.text)
        _json_error(response)
        statuses.setdefault(category, Counter())[response.status_code] += 1
    wall = time.monotonic() - started
    after = {name: _rss_mib(pid) for name, pid in replicas.items()}
    assert requests.get(f"{guarded.url}/healthz", timeout=30).status_code == 200
    assert guarded.post(files=_pair_files("../../x.png", "ü.png")).status_code == 200
    assert {name: ray_cluster.live_actors(f"ServeReplica:guarded:{name}")[0]["pid"]
            for name in replicas} == replicas  # no replica died
    for name in replicas:
        assert after[name] - before[name] < 100, (name, before, after)
    print(f"\nfuzz: {len(cases)} malformed requests in {wall:.1f} s, all 4xx with a JSON "
          "reason; by category:")
    for category, counts in statuses.items():
        by_status = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        print(f"  {category}: {sum(counts.values())} ({by_status})")
    print("  replica RSS MiB before -> after: " + ", ".join(
        f"{name} {before[name]:.0f} -> {after[name]:.0f}" for name in replicas))
    assert len(cases) >= 300 and len(statuses) == 10


# ----------------------------------------------------------------------------- monitoring


def _serve_metrics() -> dict[tuple[str, str], float]:
    """Each Serve series summed over the cluster's nodes, keyed by (metric, "application/
    deployment/status") with the parts a series has, from Ray's Prometheus endpoints."""
    import ray

    totals: dict[tuple[str, str], float] = Counter()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        text = requests.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics",
                            timeout=10).text
        for line in text.splitlines():
            if not line.startswith("ray_serve_") or "{" not in line:
                continue
            name, _, rest = line.partition("{")
            labels, _, value = rest.rpartition("} ")
            tags = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
            owner = "/".join(json.loads(tags[key]) for key in
                             ("application", "deployment", "status_code", "error_code")
                             if key in tags)
            totals[(name, owner)] += float(value)
    return totals


@SERVE_TIMEOUT
def test_prometheus_counters_move_with_requests(apps):
    """Ray's metrics of the `open` app (which no other test sends a 405 or more than one
    request): request counts by status, errors, latency and the model deployment's calls."""
    app = apps["open"]
    before = _serve_metrics()
    for _ in range(4):
        assert app.post(token=None, files=_pair_files()).status_code == 200
    for _ in range(3):
        assert requests.get(f"{app.url}/fuse", timeout=30).status_code == 405
    wanted = {("ray_serve_num_http_requests_total", "open/200"): 4,
              ("ray_serve_num_http_requests_total", "open/405"): 3,
              ("ray_serve_num_http_error_requests_total", "open/405"): 3,
              ("ray_serve_http_request_latency_ms_count", "open/200"): 4,
              ("ray_serve_deployment_request_counter_total", "open/FusionModels"): 4}

    def moved() -> dict[tuple[str, str], float] | None:
        now = _serve_metrics()
        grew = {key: now[key] - before.get(key, 0.0) for key in wanted}
        return grew if all(grew[key] >= n for key, n in wanted.items()) else None

    grew = wait_for(moved, 60, interval=2, what=f"Serve's Prometheus counters {wanted}")
    print("\nmetrics moved: " + ", ".join(f"{name}[{owner}] +{value:g}"
                                         for (name, owner), value in grew.items()))

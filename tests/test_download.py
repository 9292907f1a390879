"""Downloader against a real HTTP server on 127.0.0.1, started and stopped here."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.harness import download
from autoresearch.harness.sources import DataError, climbmix_shard_name, parquet_documents


def make_shard(path: Path, n: int = 200, tag: str = "doc") -> bytes:
    table = pa.table({"text": [f"{tag} number {i} " * 5 for i in range(n)]})
    pq.write_table(table, path, row_group_size=50)
    return path.read_bytes()


class Server:
    """Serves `files` (name -> bytes); `plan[name]` lists behaviours, one per request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (name, Range header, bytes sent)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                mode = owner.plan.get(name, []).pop(0) if owner.plan.get(name) else "ok"
                data = owner.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                # logged before replying: the client may finish before this thread does
                if mode == "500":
                    owner.log.append((name, rng, 0))
                    self.send_error(500)
                elif mode == "corrupt":  # a truncated file, honestly labelled
                    body = data[: len(data) // 2]
                    self._send(name, rng, 200, body, len(body))
                elif mode == "drop":  # promises the whole file, sends half, hangs up
                    self.close_connection = True
                    self._send(name, rng, 200, data[: len(data) // 2], len(data))
                elif rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self._send(name, rng, 206, data[start:], len(data) - start,
                               {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                else:
                    self._send(name, rng, 200, data, len(data))

            def _send(self, name, rng, code, body, length, headers=None):
                owner.log.append((name, rng, len(body)))
                self.send_response(code)
                self.send_header("Content-Length", str(length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with Server() as s:
        yield s


@pytest.fixture
def shard(tmp_path):
    return make_shard(tmp_path / "source.parquet")


def fetch(server, name, dest, **kw):
    kw.setdefault("backoff", 0.001)
    kw.setdefault("timeout", 5)
    return download.download_file(f"{server.url}/{name}", dest, **kw)


def test_retries_server_errors_then_succeeds(server, shard, tmp_path):
    server.files["a.parquet"] = shard
    server.plan["a.parquet"] = ["500", "500"]
    out = fetch(server, "a.parquet", tmp_path / "out" / "a.parquet", retries=3)
    assert out.read_bytes() == shard
    assert [sent for _, _, sent in server.log] == [0, 0, len(shard)]
    assert not Path(f"{out}.part").exists()


def test_gives_up_after_retries_with_offline_hint(server, shard, tmp_path):
    server.files["a.parquet"] = shard
    server.plan["a.parquet"] = ["500"] * 5
    with pytest.raises(DataError, match="--data builtin"):
        fetch(server, "a.parquet", tmp_path / "a.parquet", retries=2)
    assert len(server.log) == 3
    assert not (tmp_path / "a.parquet").exists()


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DataError, match="404"):
        fetch(server, "nope.parquet", tmp_path / "nope.parquet", retries=3)


def test_corrupt_download_is_deleted_and_fetched_again(server, shard, tmp_path):
    server.files["a.parquet"] = shard
    server.plan["a.parquet"] = ["corrupt"]
    out = fetch(server, "a.parquet", tmp_path / "a.parquet", retries=2)
    assert out.read_bytes() == shard
    # the second request started from scratch: the bad bytes were thrown away
    assert [(rng, sent) for _, rng, sent in server.log] == [(None, len(shard) // 2), (None, len(shard))]


def test_dropped_connection_resumes_with_range(server, shard, tmp_path):
    server.files["a.parquet"] = shard
    server.plan["a.parquet"] = ["drop"]
    out = fetch(server, "a.parquet", tmp_path / "a.parquet", retries=2)
    assert out.read_bytes() == shard
    half = len(shard) // 2
    assert server.log[-1] == ("a.parquet", f"bytes={half}-", len(shard) - half)


def test_partial_part_file_is_resumed_with_range(server, shard, tmp_path):
    server.files["a.parquet"] = shard
    dest = tmp_path / "a.parquet"
    Path(f"{dest}.part").write_bytes(shard[:1000])
    fetch(server, "a.parquet", dest)
    assert dest.read_bytes() == shard
    assert server.log == [("a.parquet", "bytes=1000-", len(shard) - 1000)]


def test_download_shards_fetches_train_and_pinned_val(server, tmp_path):
    for i, tag in ((0, "zero"), (1, "one"), (download.CLIMBMIX_VAL_SHARD, "val")):
        server.files[climbmix_shard_name(i)] = make_shard(tmp_path / f"{i}.parquet", 20, tag)
    dest = tmp_path / "raw"
    paths = download.download_shards(dest, 2, base_url=server.url, workers=3, progress=False, backoff=0.001)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert next(parquet_documents(paths[2])).startswith("val number 0")
    # a corrupted local shard is noticed, deleted and fetched again; good ones are kept
    paths[1].write_bytes(b"garbage")
    server.log.clear()
    download.download_shards(dest, 2, base_url=server.url, workers=2, progress=False)
    assert [name for name, _, _ in server.log] == ["shard_00001.parquet"]
    assert next(parquet_documents(paths[1])).startswith("one number 0")


def test_base_url_precedence(monkeypatch):
    monkeypatch.delenv(download.ENV_DATA_URL, raising=False)
    assert download.resolve_base_url() == download.DEFAULT_BASE_URL
    assert "karpathy/climbmix-400b-shuffle" in download.DEFAULT_BASE_URL
    monkeypatch.setenv(download.ENV_DATA_URL, "http://mirror/x/")
    assert download.resolve_base_url() == "http://mirror/x"
    assert download.resolve_base_url("http://other") == "http://other"


def test_unreachable_host_says_use_builtin(tmp_path):
    # nothing listens on this port: connection refused, retried, then a clear error
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DataError, match="--data builtin"):
        download.download_file(f"http://127.0.0.1:{port}/a.parquet", tmp_path / "a", retries=1, backoff=0.001)


def test_disk_full_reports_space(server, shard, tmp_path, monkeypatch):
    server.files["a.parquet"] = shard
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullFile(f) if str(path).endswith(".part") and "b" in mode and "r" not in mode else f

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(DataError, match=r"disk full.*free"):
        fetch(server, "a.parquet", tmp_path / "a.parquet", shards_left=3)

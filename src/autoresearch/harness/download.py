"""Downloads climbmix parquet shards: parallel, retried, resumable and verified.

A shard is fetched into `<name>.part` (resumed with an HTTP Range request after an
interruption) and renamed only once its size matches the server's and it opens as
parquet with a `text` column, so a file under its final name is always whole.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from autoresearch.harness.sources import (
    CLIMBMIX_VAL_SHARD,
    DataError,
    climbmix_shard_name,
)

DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
ENV_DATA_URL = "AUTORESEARCH_DATA_URL"
CHUNK = 1 << 20
OFFLINE_HINT = "without network access, use the built-in data: --data builtin"


class _Retry(Exception):
    """A failure worth another attempt (server error, timeout, dropped connection)."""


def resolve_base_url(base_url: str | None = None) -> str:
    """An explicit URL wins, then AUTORESEARCH_DATA_URL, then the public dataset."""
    url = base_url or os.environ.get(ENV_DATA_URL) or DEFAULT_BASE_URL
    return url.rstrip("/")


def verify_parquet(path: Path) -> None:
    """Raise unless the file has readable metadata and a readable `text` column."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if "text" not in pf.schema_arrow.names:
        raise ValueError(f"no `text` column in {path.name}")
    if pf.num_row_groups:
        pf.read_row_group(0, columns=["text"])
        pf.read_row_group(pf.num_row_groups - 1, columns=["text"])


def _is_valid(path: Path) -> bool:
    try:
        verify_parquet(path)
        return True
    except Exception:
        return False


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _disk_full(dest: Path, needed: int | None, shards_left: int) -> DataError:
    free = shutil.disk_usage(dest.parent).free
    need = f"about {_human(needed)} more for this shard" if needed else "more space"
    total = f" (about {_human(needed * shards_left)} for the {shards_left} shards left)" if needed and shards_left > 1 else ""
    return DataError(
        f"disk full while writing {dest}: need {need}{total}, {_human(free)} free in {dest.parent}; "
        "free some space, point AUTORESEARCH_CACHE elsewhere, or download fewer shards"
    )


def _fetch_once(url: str, dest: Path, timeout: float, on_bytes) -> None:
    """One attempt: continue `dest.part` from where it stops, then verify and rename."""
    part = Path(f"{dest}.part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "autoresearch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # nothing left to send: the part is either whole already or too long
            if _is_valid(part):
                os.replace(part, dest)
                return
            part.unlink()
            raise _Retry("range not satisfiable") from exc
        if exc.code >= 500 or exc.code == 429:
            raise _Retry(f"HTTP {exc.code}") from exc
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror) or getattr(reason, "errno", None) == errno.ENETUNREACH:
            # no name resolution or no route: retrying will not help
            raise DataError(f"could not reach {url} ({reason}); {OFFLINE_HINT}") from exc
        raise _Retry(str(getattr(exc, "reason", exc))) from exc

    with response:
        if have and response.status == 206:
            mode, start = "ab", have
        else:
            mode, start = "wb", 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        on_bytes(start, expected, reset=True)
        try:
            with open(part, mode) as f:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    on_bytes(len(block), expected)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            raise _Retry(f"connection dropped: {exc}") from exc
        except Exception as exc:  # http.client.IncompleteRead and friends
            raise _Retry(f"connection dropped: {exc}") from exc

    size = part.stat().st_size
    if expected is not None and size != expected:
        raise _Retry(f"got {size} bytes of {expected}")  # keep .part: resume next time
    if not _is_valid(part):
        part.unlink()  # corrupt: fetch it whole again
        raise _Retry("downloaded file is not a readable parquet shard")
    os.replace(part, dest)


def download_file(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    on_bytes=None,
    shards_left: int = 1,
) -> Path:
    """Fetch url to dest with up to `retries` retries, waiting backoff * 2**attempt."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    on_bytes = on_bytes or (lambda n, total, reset=False: None)
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        expected = [None]

        def track(n, total, reset=False):
            expected[0] = total
            on_bytes(n, total, reset=reset)

        try:
            _fetch_once(url, dest, timeout, track)
            return dest
        except _Retry as exc:
            last = exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                part = Path(f"{dest}.part")
                got = part.stat().st_size if part.exists() else 0
                needed = expected[0] - got if expected[0] else None
                raise _disk_full(dest, needed, shards_left) from exc
            raise
    reason = last.__cause__ if last and last.__cause__ else last
    raise DataError(f"could not download {url} after {retries + 1} attempts ({reason}); {OFFLINE_HINT}")


def shard_indices(num_train_shards: int) -> list[int]:
    if not 1 <= num_train_shards <= CLIMBMIX_VAL_SHARD:
        raise DataError(f"num_train_shards must be between 1 and {CLIMBMIX_VAL_SHARD}, got {num_train_shards}")
    return [*range(num_train_shards), CLIMBMIX_VAL_SHARD]


def download_shards(
    dest_dir: Path,
    num_train_shards: int = 10,
    *,
    base_url: str | None = None,
    workers: int = 4,
    progress: bool = True,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> list[Path]:
    """The first num_train_shards shards plus the pinned validation shard.

    Shards already present and valid are kept; invalid ones are deleted and fetched.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_base_url(base_url)
    paths = [dest_dir / climbmix_shard_name(i) for i in shard_indices(num_train_shards)]
    todo = []
    for path in paths:
        if path.exists() and not _is_valid(path):
            path.unlink()
        if not path.exists():
            todo.append(path)
    if not todo:
        return paths

    with _Progress(progress) as bars:
        left = [len(todo)]
        lock = threading.Lock()

        def job(path: Path) -> None:
            on_bytes = bars.file_task(path.name)
            download_file(
                f"{base}/{path.name}", path, retries=retries, backoff=backoff,
                timeout=timeout, on_bytes=on_bytes, shards_left=left[0],
            )
            with lock:
                left[0] -= 1
            bars.file_done(path.name)

        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = [pool.submit(job, p) for p in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise fut.exception()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return paths


class _Progress:
    """rich progress bars, or nothing when progress is off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import (
                BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.stop()

    def file_task(self, name: str):
        if not self.enabled:
            return None
        task = self._bar.add_task(name, total=None)

        def on_bytes(n, total, reset=False):
            if reset:
                self._bar.update(task, completed=n, total=total)
            else:
                self._bar.advance(task, n)

        self._tasks[name] = task
        return on_bytes

    def file_done(self, name: str) -> None:
        if self.enabled:
            task = self._tasks.pop(name)
            self._bar.update(task, description=f"{name} ok")

"""The sandbox, exercised with real confined subprocesses for every mechanism that works here."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from autoresearch import sandbox as S

PY = sys.executable
SECRET = "validation text that must stay out of reach"


@pytest.fixture(params=S.MECHANISMS)
def mechanism(request):
    ok, why = S.sandbox_available(request.param)
    if not ok:
        pytest.skip(why)
    return request.param


def run_wrapped(mechanism, code: str, *, hidden=(), writable=(), readable=(), cwd=None, env=None):
    cmd = S.wrap_command([PY, "-c", code], hidden_paths=list(hidden), writable=list(writable),
                         readable=list(readable), mechanism=mechanism)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


READ = """
import json, sys
def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError as exc:
        return type(exc).__name__
print(json.dumps([read(p) for p in sys.argv[1:]]))
"""


def read_wrapped(mechanism, paths, hidden, readable=()):
    cmd = S.wrap_command([PY, "-c", READ, *map(str, paths)], hidden_paths=hidden, writable=[],
                         readable=list(readable), mechanism=mechanism)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_hidden_file_is_unreadable_and_its_neighbour_is_not(mechanism, tmp_path):
    secret, public = tmp_path / "val.tokens", tmp_path / "train.tokens"
    secret.write_text(SECRET)
    public.write_text("train text")
    got_secret, got_public = read_wrapped(mechanism, [secret, public], hidden=[secret], readable=[tmp_path])
    assert SECRET not in got_secret
    assert got_public == "train text"
    assert secret.read_text() == SECRET  # hidden only inside, untouched outside


def test_hidden_folder_looks_empty_including_a_file_named_inside_it(mechanism, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "val.txt").write_text(SECRET)
    listing = run_wrapped(mechanism, f"import os, json; print(json.dumps(os.listdir({str(folder)!r})))",
                          hidden=[folder, folder / "val.txt"], readable=[tmp_path])
    assert listing == []


def test_writes_land_in_writable_folders_only(mechanism, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    blocked = Path(sys.prefix) / f"sandbox-write-{uuid.uuid4().hex}"  # the venv: writable outside
    code = f"""
import json
from pathlib import Path
Path({str(out / 'model.pt')!r}).write_text("weights")
try:
    Path({str(blocked)!r}).write_text("tampered")
    venv = "written"
except OSError as exc:
    venv = type(exc).__name__
print(json.dumps(venv))
"""
    try:
        assert run_wrapped(mechanism, code, writable=[out]) != "written"
    finally:
        blocked.unlink(missing_ok=True)
    assert (out / "model.pt").read_text() == "weights"


def test_keeps_working_folder_and_environment(mechanism, tmp_path):
    env = dict(os.environ, AUTORESEARCH_RUN_DIR_PROBE="kept")
    got = run_wrapped(mechanism, "import os, json; print(json.dumps([os.getcwd(), "
                      "os.environ.get('AUTORESEARCH_RUN_DIR_PROBE')]))", cwd=tmp_path, env=env,
                      writable=[tmp_path])
    assert got == [str(tmp_path), "kept"]


CONNECT = """
import json, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print(json.dumps("connected"))
except OSError as exc:
    print(json.dumps(type(exc).__name__))
"""


def test_cannot_reach_a_server_outside(mechanism):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = str(server.getsockname()[1])
    try:
        plain = subprocess.run([PY, "-c", CONNECT, port], capture_output=True, text=True, timeout=30)
        assert json.loads(plain.stdout) == "connected"  # the server is reachable without the sandbox
        cmd = S.wrap_command([PY, "-c", CONNECT, port], hidden_paths=[], writable=[], mechanism=mechanism)
        confined = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert confined.returncode == 0, confined.stderr
        assert json.loads(confined.stdout) != "connected"
    finally:
        server.close()


SPAWN = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]])
print("ready", flush=True)
time.sleep(60)
"""


def _alive_with(token: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                state = next(line for line in (entry / "status").read_text().splitlines()
                             if line.startswith("State:"))
                if "Z" not in state:  # a zombie is dead, only not yet reaped
                    pids.append(int(entry.name))
        except (OSError, StopIteration):
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_whole_group_dies_with_killpg(mechanism, sig):
    token = f"sandbox-kill-{uuid.uuid4().hex}"
    cmd = S.wrap_command([PY, "-c", SPAWN, token], hidden_paths=[], writable=[], mechanism=mechanism)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        assert len(_alive_with(token)) >= 2  # the command and its grandchild
        os.killpg(proc.pid, sig)
        proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while _alive_with(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive_with(token) == []
    finally:
        for pid in _alive_with(token):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.stdout.close()


def _fake_prepared(root: Path) -> Path:
    for name in ("train", "val"):
        (root / f"{name}.tokens").write_bytes(b"\0\0")
        np.save(root / f"{name}.offsets.npy", np.array([0, 1]))
    (root / "tokenizer.json").write_text("{}")
    (root / "DONE").write_text("{}")
    return root


def test_validation_paths_cover_val_files_at_every_vocabulary(tmp_path, monkeypatch):
    from autoresearch.harness import prepare

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    main, other = prepare.prepared_dir("climbmix", 4096), prepare.prepared_dir("climbmix", 8192)
    for d in (main, other):
        d.mkdir(parents=True)
        _fake_prepared(d)
    raw = prepare.dataset_dir("climbmix") / "raw"
    raw.mkdir()
    (raw / "shard_00000.parquet").write_bytes(b"train")
    (raw / "shard_06542.parquet").write_bytes(b"val")
    got = set(S.validation_paths("climbmix", 4096))
    want = {d / n for d in (main, other) for n in ("val.tokens", "val.offsets.npy")} | {raw / "shard_06542.parquet"}
    assert got == {p.resolve() for p in want}


def test_validation_paths_hide_the_raw_text_of_a_file_source(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus"
    text.mkdir()
    (text / "a.txt").write_text("one")
    assert S.validation_paths(str(text), 4096) == [text.resolve()]


def test_unknown_mechanism_is_reported():
    ok, why = S.sandbox_available("chroot")
    assert not ok and "chroot" in why


def test_missing_tools_name_what_to_install(monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    S._choose.cache_clear()
    try:
        ok, why = S.sandbox_available()
        assert not ok and "bubblewrap" in why
        with pytest.raises(S.SandboxUnavailable, match="bubblewrap"):
            S.wrap_command(["true"], hidden_paths=[], writable=[])
    finally:
        S._choose.cache_clear()


def test_needs_linux(monkeypatch):
    monkeypatch.setattr(S.sys, "platform", "darwin")
    S._choose.cache_clear()
    try:
        ok, why = S.sandbox_available()
        assert not ok and "Linux" in why
    finally:
        S._choose.cache_clear()


GET_AROUND = """
import ctypes, json, os, sys
secret, outer_pid = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
unmounted = libc.umount2(secret.encode(), 2) == 0  # MNT_DETACH
def read(p):
    try:
        with open(p, "rb") as f:
            return f.read(4096).decode("latin-1")
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({"unmounted": unmounted, "direct": read(secret),
                  "via_proc": read(f"/proc/{outer_pid}/root{secret}")}))
"""


def test_covers_cannot_be_removed_or_walked_around(mechanism, tmp_path):
    secret = tmp_path / "val.tokens"
    secret.write_text(SECRET)
    cmd = S.wrap_command([PY, "-c", GET_AROUND, str(secret), str(os.getpid())], hidden_paths=[secret],
                         writable=[], readable=[tmp_path], mechanism=mechanism)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert not got["unmounted"]
    assert SECRET not in got["direct"] and SECRET not in got["via_proc"]


STAT_DISKS = """
import json, os, stat, sys
def kind(p):
    try:
        return "disk" if stat.S_ISBLK(os.stat(p).st_mode) else "other"
    except OSError:
        return "absent"
print(json.dumps([kind(p) for p in sys.argv[1:]]))
"""


def _block_devices() -> list[str]:
    import stat as st

    found = []
    for entry in Path("/dev").iterdir():
        try:
            if st.S_ISBLK(entry.lstat().st_mode):
                found.append(str(entry))
        except OSError:
            continue
    return found


def test_host_disks_are_not_there(mechanism):
    disks = _block_devices()
    if not disks:
        pytest.skip("this machine shows no block devices")
    cmd = S.wrap_command([PY, "-c", STAT_DISKS, *disks], hidden_paths=[], writable=[], mechanism=mechanism)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "disk" not in json.loads(done.stdout)


def test_only_its_own_processes_are_visible(mechanism):
    code = "import json, os; print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))"
    pids = run_wrapped(mechanism, code)
    assert os.getpid() not in pids and len(pids) <= 3  # a fresh PID namespace: init, maybe a shell, itself


def test_validation_paths_hide_the_builtin_text_when_installed(tmp_path, monkeypatch):
    from autoresearch.harness import sources

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "kjv.jsonl"
    text.write_text("{}")
    monkeypatch.setattr(sources, "builtin_data_file", lambda: text)
    assert S.validation_paths("builtin", 4096) == [text.resolve()]

    def missing():
        raise sources.DataError("not installed")

    monkeypatch.setattr(sources, "builtin_data_file", missing)
    assert S.validation_paths("builtin", 4096) == []


def test_the_interpreter_stays_read_only_inside_a_writable_folder(mechanism, tmp_path):
    """A virtual environment under /tmp (writable in the sandbox) must still not be writable:
    the evaluator runs its code after training."""
    fake_prefix = tmp_path / "venv"
    fake_prefix.mkdir()
    code = f"""
import json
from pathlib import Path
try:
    Path({str(fake_prefix / 'evaluate.py')!r}).write_text("tampered")
    print(json.dumps("written"))
except OSError as exc:
    print(json.dumps(type(exc).__name__))
"""
    original = sys.prefix
    sys.prefix = str(fake_prefix)  # what the wrapper protects is read from sys.prefix
    try:
        assert run_wrapped(mechanism, code, writable=[tmp_path]) != "written"
    finally:
        sys.prefix = original
    assert not (fake_prefix / "evaluate.py").exists()


ALLOWED = """
import json, os, sys
print(json.dumps({p: os.path.exists(p) for p in sys.argv[1:]}))
"""


def test_only_what_is_allowed_is_there(mechanism, tmp_path):
    """An allow-list, not a deny-list: the home folder, other caches and any folder not named
    are simply absent; the interpreter, the harness and the named files are there."""
    import autoresearch

    named, unnamed = tmp_path / "train.tokens", tmp_path / "elsewhere" / "copy-of-val.tokens"
    unnamed.parent.mkdir()
    for path in (named, unnamed):
        path.write_text("x")
    probe = [str(named), str(unnamed), str(Path.home()), str(Path.home() / ".cache"), sys.executable,
             str(Path(autoresearch.__file__).parent / "harness" / "api.py")]
    cmd = S.wrap_command([PY, "-c", ALLOWED, *probe], hidden_paths=[], writable=[], readable=[named],
                         mechanism=mechanism)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen[str(named)] and seen[sys.executable] and seen[probe[-1]]
    assert not seen[str(unnamed)] and not seen[str(Path.home() / ".cache")]

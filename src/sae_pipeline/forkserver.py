"""A fork server for the stages: one process imports torch once, and each stage runs in a fork of it.

Every stage process used to pay for ``import torch`` (the CUDA build: ~1.6-2.5 s of wall time here, docs/speed.md)
before doing anything, and a tiny stage is mostly that import. The idea is the one behind Python's own
``multiprocessing`` "forkserver" start method and Android's zygote: a server imports the heavy libraries once;
a stage script calls :func:`handoff` before it imports torch, which sends its argv, working directory,
environment and standard streams to the server; the server forks, and the fork runs the script from the top as
``__main__`` with torch already in memory. The stage's own process waits, forwards signals, and exits with the
fork's exit status, so DVC sees an ordinary command.

What keeps a fork equivalent to a fresh process:

- the server imports only third-party libraries (:data:`PRELOAD`), never this project's code, so a code change
  is always seen; it is keyed by the Python executable, torch's install, this file and the environment variables
  that take effect at import time (:func:`_key`), so a different venv or thread setting gets its own server;
- the fork takes the stage's environment, directory, ``sys.argv``, ``sys.path`` (from its ``PYTHONPATH``) and
  standard streams, and reseeds ``random`` and numpy's global generator as a fresh process would; torch's
  generators are untouched by the import, so seeded runs are bit for bit the same (tests/test_pipeline.py
  builds the tiny project with and without the server and compares every byte);
- if the stage's process dies (``kill -9`` by DVC or a user), the fork sees its connection close and kills
  itself; SIGINT, SIGTERM and SIGHUP are forwarded.

The server starts on first use, in its own session, and exits after :data:`IDLE_S` seconds without a stage.
``SAE_PIPELINE_FORKSERVER=0`` turns it off (every stage imports torch itself). Linux only (abstract Unix sockets,
``SO_PEERCRED``); elsewhere the stage just runs in its own process.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

PRELOAD = ("numpy", "torch", "torch.nn.functional", "yaml")
IDLE_S = 60.0
# Environment variables that a library reads when it is imported (or that change how Python itself starts):
# a stage whose value differs gets a server of its own.
_IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "PYTORCH_", "TORCH_", "LD_", "PYTHON",
                    "NVIDIA_")
_CHILD_FLAG = "SAE_PIPELINE_FORKSERVER_CHILD"


def _key() -> str:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    torch_init = spec.origin if spec and spec.origin else ""
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith(_IMPORT_TIME_ENV) and k not in ("PYTHONPATH",))
    h = hashlib.sha256()
    for part in (sys.executable, sys.version, torch_init, str(os.stat(torch_init).st_mtime_ns) if torch_init else "",
                 open(__file__, "rb").read().hex(), json.dumps(env)):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:20]


def _address(key: str) -> str:
    return f"\0sae-pipeline-forkserver-{os.getuid()}-{key}"  # Linux abstract namespace: no file to clean up


def _send(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    sock.sendmsg([struct.pack("!I", len(payload))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    sock.sendall(payload)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, anc, _flags, _addr = conn.recvmsg(4, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
    if len(msg) != 4:
        raise ConnectionError("short request")
    (n,) = struct.unpack("!I", msg)
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("short request")
        buf += chunk
    return json.loads(buf), fds


# --------------------------------------------------------------------------------------------------- the client

def handoff(address: str | None = None) -> None:
    """Run the calling script in a fork of the server and exit with its status; return (and let the script go on
    in this process) when the server is off, unavailable, or this already is a fork. ``address``: a server that
    its owner started (``serve`` with its own modules; the tests' DVC commands), used only if it is there;
    default: this interpreter's stage server, started if there is none."""
    # The flag is taken off in the fork, so that what the script starts (DVC's stages) may hand off in turn
    if os.environ.pop(_CHILD_FLAG, None) or os.environ.get("SAE_PIPELINE_FORKSERVER", "1") == "0":
        return
    if not sys.platform.startswith("linux") or not hasattr(socket, "SCM_RIGHTS"):
        return
    own = _address(_key()) if address is None else None
    request = json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
                          "script": os.path.abspath(sys.argv[0])}).encode()
    for _ in range(3):
        try:
            sock = _connect(own) if own else _connect_to(address)
        except OSError:
            return
        try:
            _send(sock, request, [0, 1, 2])
            reader = sock.makefile("r")
            first = reader.readline()
        except OSError:
            first = ""
        if first.startswith("pid "):
            break
        # The server closed the connection before it forked: it was exiting (idle for IDLE_S) as this stage
        # connected, which left it queued on the closing socket. Nothing ran, so try again (a new server starts)
        # and run here only if that fails too.
        sock.close()
        time.sleep(0.05)
    else:
        return
    pid = int(first.split()[1])

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    last = reader.readline()
    code = int(last.split()[1]) if last.startswith("exit ") else 1
    sys.stdout.flush()
    os._exit(code)


def _connect_to(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address)
    except OSError:
        s.close()
        raise
    return s


def _connect(address: str) -> socket.socket:
    """Connect to the server for this key, starting it if there is none (two stages starting at once: one server
    binds the address, the other exits and its stage connects to the first)."""
    def attempt():
        try:
            return _connect_to(address)
        except OSError:
            return None

    s = attempt()
    if s is not None:
        return s
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", address[1:]], cwd="/", env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.01)
        s = attempt()
        if s is not None:
            return s
    raise OSError("the fork server did not start")


# --------------------------------------------------------------------------------------------------- the server

def serve(address: str, preload: tuple[str, ...] = PRELOAD) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)  # the address is the lock: a second server for the same key stops here
    except OSError:
        return
    listener.listen(64)  # stages that connect while the imports below run wait in the backlog
    import importlib

    for name in preload:
        importlib.import_module(name)
    base_path = list(sys.path)
    children: dict[int, socket.socket] = {}
    listener.settimeout(0.2)
    idle_since = time.monotonic()
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                conn = children.pop(pid)
                if code < 0:  # killed by a signal, so it could not say so itself (see _child)
                    try:
                        conn.sendall(f"exit {128 - code}\n".encode())
                    except OSError:
                        pass
                conn.close()
                idle_since = time.monotonic()
        if not children and time.monotonic() - idle_since > IDLE_S:
            listener.close()  # at once: a stage that connects from now on starts a new server
            return
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] != os.getuid():  # only this user's stages
                conn.close()
                continue
            request, fds = _recv_request(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            for c in children.values():
                c.close()
            _child(conn, request, fds, base_path)  # never returns
        for fd in fds:
            os.close(fd)
        children[pid] = conn


def _child(conn: socket.socket, request: dict, fds: list[int], base_path: list[str]) -> None:
    import atexit
    import io
    import random
    import runpy
    import threading
    import traceback

    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        for s in (signal.SIGINT,):
            signal.signal(s, signal.default_int_handler)
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[_CHILD_FLAG] = "1"
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), write_through=unbuffered,
                                      line_buffering=fd == 2 or os.isatty(fd),
                                      errors="backslashreplace" if fd == 2 else "strict")
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        script = request["script"]
        extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(script), *extra, *base_path]
        sys.argv[:] = request["argv"]
        random.seed()  # a fresh process's global generators are seeded from the OS
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()

        def watch():  # the stage's own process is gone (killed): so is this one
            try:
                conn.recv(1)
            finally:
                os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        conn.sendall(f"pid {os.getpid()}\n".encode())
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            # The fork reports its own status, so that a stage in flight finishes normally even if the server
            # is stopped meanwhile; the server reports only deaths by a signal.
            conn.sendall(f"exit {code}\n".encode())
        finally:
            os._exit(code)


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "serve":  # serve ADDRESS [MODULE ...]
    # Run as a script, so Python put this file's folder first on sys.path: take it off before the imports, or a
    # module of this package (io.py, data.py, ...) would shadow a library's own import of that name.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    serve("\0" + sys.argv[2], tuple(sys.argv[3:]) or PRELOAD)

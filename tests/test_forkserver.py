"""The stages' fork server (sae_pipeline/forkserver.py), run for real: a script that hands off runs in a fork that
already has torch imported, with the script's own argv, directory, environment and standard streams, and its
process exits with the fork's status; killing that process kills the fork, and SIGTERM reaches it. (That a whole
`dvc repro` gives the same bytes with and without the server: tests/test_pipeline.py.)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, isolated_env, run

PROBE = '''
import json, os, sys, time
from sae_pipeline.forkserver import handoff
handoff()
mode = sys.argv[1]
if mode == "report":
    print(json.dumps({"torch_loaded": "torch" in sys.modules, "pid": os.getpid(), "argv": sys.argv[1:],
                      "cwd": os.getcwd(), "probe": os.environ.get("PROBE")}), flush=True)
    print("to stderr", file=sys.stderr)
    sys.exit(3)
if mode == "raise":
    raise ValueError("boom")
if mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(120)
'''


@pytest.fixture
def project(tmp_path):
    """A folder laid out like the project (src/, stages/), with the probe as a stage script."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": "src", "PROBE": "from-the-stage"}
    env.pop("SAE_PIPELINE_FORKSERVER", None)
    return tmp_path, env


def probe(project, *args, env=None, **kw):
    cwd, base = project
    return subprocess.Popen([sys.executable, "stages/probe.py", *args], cwd=cwd, env=env or base,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("server", [True, False])
def test_a_handed_off_script_runs_in_a_fork_with_its_own_argv_cwd_env_streams_and_status(project, server):
    cwd, env = project
    if not server:
        env = {**env, "SAE_PIPELINE_FORKSERVER": "0"}
    proc = probe(project, "report", "x y", env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    got = json.loads(out)
    assert got["argv"] == ["report", "x y"] and got["cwd"] == str(cwd) and got["probe"] == "from-the-stage"
    assert err.strip() == "to stderr"
    # in a fork of the server: torch was in memory before the script imported anything, another process
    assert got["torch_loaded"] is server and (got["pid"] != proc.pid) is server


def test_a_traceback_reaches_the_stage_s_stderr_and_fails_it(project):
    proc = probe(project, "raise")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "ValueError: boom" in err and "Traceback" in err, err


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_stopping_the_stage_s_process_stops_the_fork(project, tmp_path, how):
    pidfile = tmp_path / "fork.pid"
    proc = probe(project, "sleep", str(pidfile))
    deadline = time.time() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    fork = psutil.Process(int(pidfile.read_text()))
    assert fork.pid != proc.pid
    proc.send_signal(getattr(signal, how))  # this test's own process; the fork must follow by itself
    proc.wait(timeout=30)
    if how == "SIGTERM":  # forwarded to the fork, whose death by SIGTERM is the stage's status
        assert proc.returncode == 128 + signal.SIGTERM, proc.communicate()
    gone, alive = psutil.wait_procs([fork], timeout=10)
    assert not alive, "the fork outlived its stage's process"


def test_the_tests_dvc_runs_in_a_fork_of_the_dvc_server_and_its_stages_hand_off_in_turn(project, dvc_server):
    """tests/bin/dvc, first on the tests' PATH: a `dvc repro` runs in a fork of this worker's DVC server (the stage's
    shell sees DVC's parent is the server), and the stage it starts still hands off to the stages' torch server
    (the fork's flag does not reach DVC's children)."""
    cwd, _ = project
    env = isolated_env(cwd / "home")
    env.pop("SAE_PIPELINE_FORKSERVER", None)
    (cwd / "stages/stage.py").write_text(
        "import json, sys\nfrom sae_pipeline.forkserver import handoff\nhandoff()\n"
        "json.dump({'torch_loaded': 'torch' in sys.modules}, open('probe.json', 'w'))\n")
    (cwd / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: awk '{print $4}' /proc/$PPID/stat > dvc_parent && PYTHONPATH=src python stages/stage.py\n"
        "    outs: [probe.json, dvc_parent]\n")
    run("git init -q && dvc init -q && dvc repro -q", cwd, env)
    assert int((cwd / "dvc_parent").read_text()) == dvc_server.pid
    assert json.loads((cwd / "probe.json").read_text()) == {"torch_loaded": True}


def test_a_stage_that_reaches_a_server_as_it_exits_tries_again(project, tmp_path):
    """A server that has been idle for IDLE_S exits; a stage that connected just before that is left queued on the
    closing socket and gets its connection closed before any fork (seen once in a `make test`: the probe above ran
    in its own process). Nothing ran, so the stage tries again and reaches the next server. Here the exiting server
    is played by this test: it takes the stage's connection, gives the address to a real server, and only then
    closes that connection."""
    import socket

    cwd, env = project
    address = f"sae-pipeline-test-{os.getpid()}-{tmp_path.name}"
    (cwd / "stages/stage.py").write_text(
        "import json, os, sys\nfrom sae_pipeline.forkserver import handoff\nhandoff('\\0' + os.environ['ADDR'])\n"
        "print(json.dumps({'numpy_loaded': 'numpy' in sys.modules, 'pid': os.getpid()}), flush=True)\n")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind("\0" + address)
    old.listen(1)
    stage = subprocess.Popen([sys.executable, "stages/stage.py"], cwd=cwd, env={**env, "ADDR": address},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        old.settimeout(60)
        conn, _ = old.accept()
        old.close()  # the address is free: a new server binds it
        server = subprocess.Popen([sys.executable, str(ROOT / "src/sae_pipeline/forkserver.py"), "serve", address,
                                   "numpy"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:  # until the new server accepts (a connection that sends nothing: it closes it, forks nothing)
            probe_conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe_conn.connect("\0" + address)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.05)
            finally:
                probe_conn.close()
        conn.close()  # the exiting server's last act: the stage's first connection closes, before any fork
        out, err = stage.communicate(timeout=120)
        assert stage.returncode == 0, err
        got = json.loads(out)
        assert got["numpy_loaded"] and got["pid"] != stage.pid, got  # it ran in a fork of the new server
    finally:
        if stage.poll() is None:
            stage.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)

"""Test utility: a warm Python for tests that start many processes with the same heavy imports (torch, accelerate,
diffusers: ~5 s of start-up each on the 2-core machine). A server imports the modules once; each run is a process
forked from it, with the caller's argv, environment, working directory, stdin, stdout and stderr, that runs the script
as `__main__` and exits with its status - a real, separate process; only the interpreter start-up is shared.

Usage (the modules the script imports, for `subprocess.Popen` as `[sys.executable, script, *args]` would be):

    with warm_python(folder, ["torch", "geoface_model.train_run"]) as python:   # folder: a short path (its socket)
        proc = subprocess.Popen([*python, script, *args], env=env, cwd=cwd, stdin=..., stdout=..., stderr=...)

`python` starts a small launcher (`python -S`, no imports) that hands its stdin, stdout, stderr, argv, environment and
working directory to the server over a Unix socket, waits for the forked process and exits with its status (killed by
a signal: by the same signal). `warm_python` kills the server and every process it started when the block ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

HERE = os.path.abspath(__file__)


@contextlib.contextmanager
def warm_python(folder, modules, env=None, timeout=300):
    """Start the server (in `folder`, its own process group) importing `modules`; yield the launcher's argv prefix."""
    sock = os.path.join(str(folder), "warm.sock")
    if len(sock) > 100:
        raise ValueError(f"{sock}: a Unix socket path must be shorter than 100 characters")
    server = subprocess.Popen([sys.executable, HERE, "serve", sock, *modules], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = server.stdout.readline()  # "ready" once the modules are imported and the socket listens
        if line.strip() != "ready":
            server.wait(timeout=timeout)
            raise RuntimeError(f"{HERE}: the warm Python server did not start (exit {server.returncode}): {line!r}")
        yield [sys.executable, "-S", HERE, "run", sock]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=timeout)
        server.stdout.close()


def serve(sock, modules):
    """Import `modules`, then fork a runner for each launcher that connects (never returns)."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the runners are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _runner(conn)
        conn.close()


def _runner(conn):
    """In a fork of the server: receive a launcher's request, fork the process that runs it, report its status."""
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(msg)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            try:
                conn.close()
                _run(request, fds)
            finally:
                os._exit(1)  # _run ends the process itself; this is for a failure before the script runs
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        conn.sendall(json.dumps({"pid": pid, "status": status}).encode())
    finally:
        os._exit(0)


def _run(request, fds):
    """The forked process: the launcher's stdin/stdout/stderr, environment, working directory and argv; runs the
    script as `__main__` and exits as `python script` would (SystemExit's code, 1 after an uncaught exception)."""
    import atexit
    import runpy
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = request["argv"]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def launch(sock, argv):
    """The launcher: hand this process's stdin, stdout, stderr, environment and working directory to the server, then
    exit with the status of the process it forked."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
    if not reply:
        sys.exit(f"{HERE}: the warm Python server ended before the process it ran reported its status")
    status = json.loads(reply)["status"]
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    else:
        launch(sys.argv[2], sys.argv[3:])

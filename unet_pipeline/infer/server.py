"""A model server on a Unix socket: the model is loaded once, however many cases are inferred.

The workflow runs one ``infer`` job per case, so that each case keeps its own job, log and
failure. Loading the network for every job would cost a Python start, the CUDA context and
the weights per case; instead the first ``infer`` job starts a server process that loads the
models once, and every ``infer`` job (the first included) sends its case to it and waits for
the answer. A case that fails still fails only its own job.

- **One server per model, device and allocation**: the socket's name is a hash of the model
  folders (and their weights' size and time), the device setting, the host, the Slurm job id and
  ``CUDA_VISIBLE_DEVICES``. Inside a Slurm group job the cases of that job share one server; a
  retrained model gets a new server.
- **Lifetime**: the server exits after ``idle_seconds`` without a request, or as soon as the
  Snakemake process that ran the job which started it has ended (on a cluster: the group job's
  Snakemake, so the server never outlives its Slurm job). Nothing else has to stop it.
- **Safety**: the socket lives in a folder only its user can open (mode 0700); requests name files
  by path, never carry code.
- **Fallback**: if the server cannot be started or dies, the job predicts in its own process.

Protocol: one JSON line per connection, ``{"op": "infer", "preprocessed_dir", "out_probs",
"inference"}`` (or ``{"op": "ping"}`` / ``{"op": "stop"}``), answered by one JSON line
``{"ok": true, "info": {...}}`` or ``{"ok": false, "error": "...", "kind": "CaseError"}``.
Requests are served concurrently, one thread each (the workflow's ``--cores`` bounds how many).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ServerUnavailable", "infer_via_server", "server_socket_path", "serve", "stop_server", "main"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # loading the models (and a CUDA context) on a busy node


class ServerUnavailable(RuntimeError):
    """The model server could not be reached or started; predict in-process instead."""


def _socket_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"unet-pipeline-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise ServerUnavailable(f"{path}: not a private folder of this user; not using a model server")
    return path


def server_socket_path(model_dirs: Sequence[str | Path], device: str = "auto") -> Path:
    """Socket of the server for these models on this host, Slurm job and GPU allocation."""
    parts = [socket.gethostname(), device, os.environ.get("SLURM_JOB_ID", ""),
             os.environ.get("CUDA_VISIBLE_DEVICES", "")]
    for d in model_dirs:
        weights = Path(d).resolve() / "model.safetensors"
        st = weights.stat() if weights.exists() else None
        parts += [str(weights), str(st.st_size if st else ""), str(st.st_mtime_ns if st else "")]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return _socket_dir() / f"{key}.sock"  # short: Unix socket paths are limited to ~107 bytes


def _request(sock_path: Path, message: Mapping, timeout: float | None = None) -> dict:
    """Send one request, wait for the answer (no time limit by default: a case may take long)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(sock_path))
        s.settimeout(timeout)
        s.sendall((json.dumps(dict(message)) + "\n").encode())
        with s.makefile("rb") as fh:
            line = fh.readline()
    if not line:
        raise ServerUnavailable(f"model server at {sock_path} closed the connection without an answer")
    return json.loads(line)


def _alive(sock_path: Path) -> bool:
    try:
        return bool(_request(sock_path, {"op": "ping"}, timeout=10.0).get("ok"))
    except (OSError, ValueError, ServerUnavailable):
        return False


def _snakemake_ancestor() -> int | None:
    """Pid of the nearest ancestor process that is a Snakemake (None outside Snakemake)."""
    pid = os.getppid()
    for _ in range(32):
        if pid <= 1:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        if any(os.path.basename(arg) == b"snakemake" for arg in cmdline[:3]):  # snakemake ... / python -m snakemake
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return None


def _start_server(model_dirs: Sequence[str], device: str, sock_path: Path, *, idle_seconds: float,
                  log_path: Path | None) -> None:
    """Start a server process (detached, own session) and wait until it answers."""
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()  # a stale socket of a server that died
    owner = _snakemake_ancestor()
    cmd = [sys.executable, "-m", "unet_pipeline.infer.server", "--socket", str(sock_path), "--device", device,
           "--idle-seconds", str(idle_seconds), *(["--log", str(log_path)] if log_path else []),
           *(["--owner-pid", str(owner)] if owner else []), *[str(Path(d).resolve()) for d in model_dirs]]
    out = open(log_path, "a", encoding="utf-8") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                cwd="/", env={**os.environ, "PYTHONPATH": _package_root()})
    finally:
        if log_path:
            out.close()
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServerUnavailable(f"model server exited with status {proc.returncode} while starting"
                                    + (f" (see {log_path})" if log_path else ""))
        if sock_path.exists() and _alive(sock_path):
            log.info("started model server pid %d at %s", proc.pid, sock_path)
            return
        time.sleep(0.2)
    proc.terminate()
    raise ServerUnavailable(f"model server did not answer within {START_TIMEOUT_S:.0f} s")


def _package_root() -> str:
    """``PYTHONPATH`` for the server: the folder holding this package (also when not installed)."""
    root = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


def infer_via_server(model_dirs: Sequence[str | Path], preprocessed_dir: str | Path, out_probs: str | Path, *,
                     inference: Mapping | None = None, log_dir: str | Path | None = None) -> dict:
    """Infer one case through the model server, starting the server if none is running.

    Parameters
    ----------
    model_dirs
        Trained model folder(s); several are ensembled.
    preprocessed_dir, out_probs
        As for :meth:`unet_pipeline.infer.predictor.Predictor.predict`.
    inference
        The ``inference`` config section; ``device`` and ``server_idle_seconds`` are read here.
    log_dir
        Where a newly started server writes its log (``model_server_<key>.log``).

    Returns
    -------
    dict
        The prediction's info plus ``server`` (pid, socket, cases served, model load seconds).

    Raises
    ------
    ServerUnavailable
        No server could be reached or started (the caller predicts in-process).
    CaseError, FileNotFoundError, ValueError
        The case itself failed on the server (its message names the file).
    """
    from ..errors import CaseError

    inference = dict(inference or {})
    device = str(inference.get("device", "auto"))
    dirs = [str(d) for d in model_dirs]
    sock_path = server_socket_path(dirs, device)
    lock_path = sock_path.with_suffix(".lock")
    with open(lock_path, "a") as lock:  # one starter at a time; the others wait, then connect
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (sock_path.exists() and _alive(sock_path)):
                log_path = Path(log_dir).resolve() / f"model_server_{sock_path.stem}.log" if log_dir else None
                if log_path:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                _start_server(dirs, device, sock_path, idle_seconds=float(inference.get("server_idle_seconds", 120)),
                              log_path=log_path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    message = {"op": "infer", "preprocessed_dir": str(Path(preprocessed_dir).resolve()),
               "out_probs": str(Path(out_probs).resolve()), "inference": inference}
    try:
        answer = _request(sock_path, message)
    except (OSError, ValueError) as exc:
        raise ServerUnavailable(f"model server at {sock_path} failed: {exc}") from exc
    if answer.get("ok"):
        return answer["info"]
    kinds = {"CaseError": lambda m: CaseError(preprocessed_dir, m), "FileNotFoundError": FileNotFoundError,
             "ValueError": ValueError}
    raise kinds.get(answer.get("kind"), RuntimeError)(answer.get("error", "model server error"))


def stop_server(model_dirs: Sequence[str | Path], device: str = "auto") -> bool:
    """Ask the server of these models to exit; True if one answered."""
    try:
        return bool(_request(server_socket_path(model_dirs, device), {"op": "stop"}, timeout=30.0).get("ok"))
    except (OSError, ValueError, ServerUnavailable):
        return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, sock_path: str, predictor, idle_seconds: float, owner_pid: int | None = None) -> None:
        self.predictor = predictor
        self.idle_seconds = idle_seconds
        self.owner_pid = owner_pid
        self.active = 0
        self.served = 0
        self.last_activity = time.monotonic()
        self.state_lock = threading.Lock()
        old_umask = os.umask(0o177)  # socket readable/writable by its user only
        try:
            super().__init__(sock_path, _Handler)
        finally:
            os.umask(old_umask)

    def watch_idle(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_seconds / 4))
            with self.state_lock:
                idle = self.active == 0 and time.monotonic() - self.last_activity > self.idle_seconds
            if idle:
                log.info("idle for %.0f s after %d case(s): exiting", self.idle_seconds, self.served)
                self.shutdown()
                return
            if self.owner_pid and not Path(f"/proc/{self.owner_pid}").exists():
                log.info("Snakemake (pid %d) has ended, after %d case(s): exiting", self.owner_pid, self.served)
                self.shutdown()
                return


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        with server.state_lock:
            server.active += 1
        try:
            answer = self._answer(server, self.rfile.readline())
            self.wfile.write((json.dumps(answer) + "\n").encode())
        finally:
            with server.state_lock:
                server.active -= 1
                server.last_activity = time.monotonic()

    def _answer(self, server: _Server, line: bytes) -> dict:
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "ping":
                return {"ok": True, "pid": os.getpid()}
            if op == "stop":
                threading.Thread(target=server.shutdown, daemon=True).start()
                return {"ok": True, "pid": os.getpid()}
            if op != "infer":
                return {"ok": False, "error": f"unknown op {op!r}", "kind": "ValueError"}
            t0 = time.perf_counter()
            info = server.predictor.predict(request["preprocessed_dir"], request["out_probs"], request.get("inference"))
            with server.state_lock:
                server.served += 1
                served = server.served
            log.info("%s: %d slices in %.1f s (case %d of this server)", request["preprocessed_dir"],
                     info["slices"], time.perf_counter() - t0, served)
            return {"ok": True, "info": {**info, "server": {
                "pid": os.getpid(), "socket": server.server_address, "cases_served": served,
                "model_load_seconds": server.predictor.load_seconds}}}
        except Exception as exc:  # the case fails; the server goes on serving the others
            log.error("request failed: %s", exc)
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}


def serve(model_dirs: Sequence[str | Path], sock_path: str | Path, *, device: str = "auto",
          idle_seconds: float = 120.0, owner_pid: int | None = None) -> int:
    """Load the models once and serve requests on ``sock_path`` until idle (or until the process
    ``owner_pid`` has ended); returns the number of cases served."""
    from .predictor import Predictor

    predictor = Predictor(model_dirs, device)
    sock_path = Path(sock_path)
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    server = _Server(str(sock_path), predictor, idle_seconds, owner_pid)
    log.info("model server pid %d serving %s on %s", os.getpid(), ", ".join(map(str, model_dirs)), sock_path)
    threading.Thread(target=server.watch_idle, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
    return server.served


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unet_pipeline.infer.server``: started by :func:`infer_via_server`."""
    from ..runlog import FORMAT

    parser = argparse.ArgumentParser(prog="python -m unet_pipeline.infer.server",
                                     description="Serve tiled inference of trained U-Net models on a Unix socket "
                                                 "(started by the workflow's infer jobs; exits when idle).")
    parser.add_argument("model_dirs", nargs="+", help="trained model folder(s); several are ensembled")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--idle-seconds", type=float, default=120.0, help="exit after this long without a request")
    parser.add_argument("--log", help="log file (default: stderr)")
    parser.add_argument("--owner-pid", type=int, help="exit when this process (the Snakemake that started us) ends")
    args = parser.parse_args(argv)
    handler = logging.FileHandler(args.log, encoding="utf-8") if args.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    served = serve(args.model_dirs, args.socket, device=args.device, idle_seconds=args.idle_seconds,
                   owner_pid=args.owner_pid)
    log.info("served %d case(s)", served)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

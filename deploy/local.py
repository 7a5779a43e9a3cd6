"""python -m deploy.local up|down|status: the local Triton server, no Docker, no GPU.

Runs the real ``tritonserver`` binary bundled in the nvidia-pytriton wheel with the Python backend and
a Python-based ``onnxruntime`` backend (deploy/backends/onnxruntime/model.py), so the same
model_repository/ also serves unchanged on the NGC image's native onnxruntime backend. Binds to
127.0.0.1, waits for readiness, logs to a file, stops by PID and removes the Python backend's
shared-memory files that no live process maps any more. Qdrant needs no process here: the embedded
engine runs inside the client (see client/store/).

``up`` also starts a supervisor (``python -m deploy.local supervise``, unless ``--no-supervise``) that starts
the server again on the same ports when it exits without ``down`` or loses one of its stub processes: in this
Triton (2.51) a Python-backend stub that stalls (a paused VM, a stopped process) is declared unhealthy and the
server then aborts, a stub that dies leaves its model instance failing every request, and the Python backend no
longer restarts stubs itself. Clients retry while it comes back (client/triton.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from client import spec
from export import repository

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE = ROOT / "data" / "triton"
# shared-memory regions of the Python backend and of Python-based backends (backends/onnxruntime here):
# triton_python_backend_shm_region_*, triton_onnxruntime_backend_shm_region_*
SHM_GLOB = "triton_*backend_shm_region*"
SHM_MARK = "backend_shm_region"


class DeployError(RuntimeError):
    pass


def _site() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent


def server_binary() -> Path:
    return _site() / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def library_path(state_dir: Path) -> str:
    """nvidia_pytriton.libs (libcudart, libb64 ... for the stub and perf_analyzer) + Python's LIBDIR,
    plus a folder of the plain sonames perf_analyzer asks for."""
    libs = _site() / "nvidia_pytriton.libs"
    alias = state_dir / "lib"
    alias.mkdir(parents=True, exist_ok=True)
    for soname, prefix in (("libb64.so.0d", "libb64-"), ("libcudart.so.12", "libcudart-")):
        target = next(libs.glob(prefix + "*"), None)
        link = alias / soname
        if target and not link.exists():
            link.symlink_to(target)
    parts = [str(libs), str(alias), sysconfig.get_config_var("LIBDIR") or "", os.environ.get("LD_LIBRARY_PATH", "")]
    return ":".join(p for p in parts if p)


def prepare_backends(state_dir: Path) -> Path:
    """backends/python (libtriton_python.so, utils, the stub for this Python) and backends/onnxruntime."""
    tri = _site() / "pytriton" / "tritonserver"
    py = state_dir / "backends" / "python"
    py.mkdir(parents=True, exist_ok=True)
    stub = tri / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.exists():
        raise DeployError(f"nvidia-pytriton ships no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor} ({stub})")
    for src in (tri / "backends" / "python" / "libtriton_python.so", tri / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = py / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    ort_dir = state_dir / "backends" / "onnxruntime"
    ort_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "deploy" / "backends" / "onnxruntime" / "model.py", ort_dir / "model.py")
    return state_dir / "backends"


def port_free(port: int) -> bool:
    """Whether a server can listen on 127.0.0.1:``port`` (as tritonserver does, with SO_REUSEADDR: the
    TIME_WAIT connections a killed server leaves do not hold its port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def cleanup_shm() -> list[str]:
    """Removes Python-backend shared-memory regions (of every Python-based backend) that no running
    process has mapped: a server killed with SIGKILL leaves them behind."""
    shm = Path("/dev/shm")
    regions = list(shm.glob(SHM_GLOB)) if shm.is_dir() else []
    if not regions:
        return []
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            for line in maps.read_text().splitlines():
                if SHM_MARK in line:
                    mapped.add(line.split()[-1].replace(" (deleted)", ""))
        except OSError:
            continue
    removed = []
    for r in regions:
        if str(r) not in mapped:
            try:
                r.unlink()
                removed.append(r.name)
            except OSError:
                pass
    return removed


@dataclass
class ServerState:
    pid: int
    grpc_port: int
    http_port: int
    metrics_port: int
    log: str
    repository: str
    started: float
    stubs: list[str] = field(default_factory=list)  # its model processes once it was ready (empty while it starts)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


RESTART_LIMIT = 5  # the supervisor gives up after this many restarts ...
RESTART_WINDOW = 600.0  # ... within this many seconds (a server that cannot stay up needs a person)
SUPERVISE_INTERVAL = 1.0  # seconds between the supervisor's looks at the server


class LocalTriton:
    """One local tritonserver, described by ``state_dir/server.json`` (and its supervisor by
    ``state_dir/supervisor.pid``)."""

    def __init__(self, state_dir: Path = DEFAULT_STATE, repository: Path = ROOT / "model_repository"):
        self.state_dir = Path(state_dir)
        self.repository = Path(repository)
        self.state_file = self.state_dir / "server.json"
        self.supervisor_file = self.state_dir / "supervisor.pid"

    def state(self) -> ServerState | None:
        if not self.state_file.exists():
            return None
        return ServerState(**json.loads(self.state_file.read_text()))

    def up(self, grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002, timeout: float = 180.0,
           env: dict[str, str] | None = None) -> ServerState:
        """Starts the server (or waits for the running one); ``env``: the environment to start it in
        (default: this process's), to which the library path and this Python's bin folder are added."""
        current = self.state()
        if current and _alive(current.pid):
            self.wait_ready(current, timeout)
            return current
        missing = [m.name for m in spec.ONNX_MODELS if not spec.onnx_file(self.repository, m.name).exists()]
        if missing or not self.repository.is_dir():
            raise DeployError(f"models not built in {self.repository}: {missing or 'no repository'}; run `python -m export.build`")
        stale = repository.stale_python_files(self.repository)
        if stale:
            raise DeployError(f"the Python models' code in {self.repository} is missing or out of date ({', '.join(stale)}); "
                              "run `python -m export.repository`")
        busy = [p for p in (grpc_port, http_port, metrics_port) if not port_free(p)]
        if busy:
            raise DeployError(f"port(s) {busy} on 127.0.0.1 are in use; stop what holds them or pass other ports")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.state_dir)
        log = self.state_dir / "tritonserver.log"
        env = dict(os.environ if env is None else env)
        env["LD_LIBRARY_PATH"] = library_path(self.state_dir)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        cmd = [str(server_binary()), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
               "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
               "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0"]
        with open(log, "ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.state_dir)
        st = ServerState(proc.pid, grpc_port, http_port, metrics_port, str(log), str(self.repository), time.time())
        self.state_file.write_text(json.dumps(asdict(st)))
        try:
            self.wait_ready(st, timeout, proc)
        except DeployError:
            self._stop_server(st)  # only the server this call started (a supervisor restarting it goes on)
            raise
        # a ready server has started every model instance's process: the supervisor holds it to this list (one that
        # first looked later could miss a process that died in between)
        st.stubs = sorted(stub_instances(st.pid).values())
        self.state_file.write_text(json.dumps(asdict(st)))
        return st

    def wait_ready(self, st: ServerState, timeout: float, proc: subprocess.Popen | None = None) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.time() + timeout
        client = grpcclient.InferenceServerClient(st.grpc_url)
        delay = 0.05
        while time.time() < deadline:
            exited = proc.poll() is not None if proc else not _alive(st.pid)
            if exited:
                raise DeployError(f"tritonserver exited during start-up; last lines of {st.log}:\n{tail(st.log)}")
            try:
                if client.is_server_ready() and client.is_model_ready(spec.ENSEMBLE):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(delay)  # polling interval while waiting on readiness
            delay = min(delay * 1.5, 0.5)
        raise DeployError(f"tritonserver not ready after {timeout:.0f} s; last lines of {st.log}:\n{tail(st.log)}")

    def supervisor_pid(self) -> int | None:
        try:
            pid = int(self.supervisor_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start_supervisor(self, env: dict[str, str] | None = None) -> int:
        """Starts ``python -m deploy.local supervise`` for this server (detached; one per state dir)."""
        pid = self.supervisor_pid()
        if pid:
            return pid
        cmd = [sys.executable, "-m", "deploy.local", "supervise", f"--state-dir={self.state_dir}", f"--repository={self.repository}"]
        with open(self.state_dir / "supervisor.log", "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ if env is None else env),
                                    start_new_session=True, cwd=ROOT)
        self.supervisor_file.write_text(str(proc.pid))
        return proc.pid

    def supervise(self, interval: float = SUPERVISE_INTERVAL, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW) -> int:
        """Watches the server until ``down`` removes its state, and starts it again on the same ports when it exits
        on its own or one of its model processes (Python-backend stubs) dies while it runs on: a stub that is gone
        stays gone and its requests fail (at most ``limit`` restarts in ``window`` seconds). Returns the number of
        restarts."""
        restarts: list[float] = []
        stopping = []  # SIGTERM from down: finish a start-up in progress (its state is written), then leave
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while True:
            st = self.state()
            if st is None or stopping:  # down: nothing to watch
                return len(restarts)
            why = None
            if not _alive(st.pid):
                why = f"tritonserver (pid {st.pid}) exited without `down`"
            elif st.stubs:  # ready (up() listed its model processes): all of them must still run
                gone = set(st.stubs) - set(stub_instances(st.pid).values())
                if gone:
                    why = f"model process(es) {', '.join(sorted(gone))} of tritonserver (pid {st.pid}) exited"
            if why:
                now = time.time()
                restarts = [t for t in restarts if now - t < window] + [now]
                if len(restarts) > limit:
                    _say(f"{why}; {len(restarts)} times in {window:.0f} s: not starting it again (see {st.log})")
                    return len(restarts) - 1
                _say(f"{why}; starting it again on port {st.grpc_port}; from the end of {st.log}:\n{last_words(st.log)}")
                self._stop_server(st)
                try:
                    new = self.up(st.grpc_port, st.http_port, st.metrics_port)
                    _say(f"tritonserver ready again, pid {new.pid}")
                except DeployError as exc:
                    _say(f"could not start tritonserver again: {exc}")
                    self.state_file.write_text(json.dumps(asdict(st)))  # keep watching: try again next time
            time.sleep(interval)  # the supervisor's polling interval

    def _stop_supervisor(self, timeout: float = 10.0) -> None:
        pid = self.supervisor_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + timeout
            while _alive(pid) and time.time() < deadline:
                time.sleep(0.05)
        self.supervisor_file.unlink(missing_ok=True)

    def down(self, timeout: float = 30.0) -> bool:
        self._stop_supervisor()
        st = self.state()
        if st is None:
            cleanup_shm()
            return False
        self._stop_server(st, timeout)
        return True

    def _stop_server(self, st: ServerState, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group (SIGKILL after ``timeout``), then its state and shared memory go."""
        if _alive(st.pid):
            try:
                os.killpg(st.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + timeout
            while _alive(st.pid) and time.time() < deadline:
                try:
                    os.waitpid(st.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.05)
            if _alive(st.pid):
                os.killpg(st.pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        cleanup_shm()

    def status(self) -> dict:
        st = self.state()
        if st is None:
            return {"running": False}
        info = {"running": _alive(st.pid), **asdict(st), "supervisor": self.supervisor_pid()}
        if info["running"]:
            import tritonclient.grpc as grpcclient

            try:
                c = grpcclient.InferenceServerClient(st.grpc_url)
                info["ready"] = c.is_server_ready()
                info["models"] = {m.name: m.state for m in c.get_model_repository_index().models}
            except Exception as exc:  # noqa: BLE001
                info["ready"] = False
                info["error"] = str(exc)
        return info


def tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _say(message: str) -> None:
    """One time-stamped line of the supervisor's log."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def stub_instances(server_pid: int) -> dict[int, str]:
    """The live Python-backend stub processes of a tritonserver: pid -> model instance name (e.g. "detector_0_1")."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[1]) != server_pid:
                continue
            args = [a for a in (stat.parent / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError, ValueError):
            continue
        if len(args) > 2 and args[0].endswith(b"triton_python_backend_stub"):  # ... <instance name> <runtime>
            out[int(stat.parent.name)] = args[-2].decode(errors="replace")
    return out


def last_words(path: str, lines: int = 40) -> str:
    """The end of a server log without its stack-trace frames (``12# 0x... in lib``): what it said before exiting."""
    kept = [ln for ln in tail(path, lines).splitlines() if ln.strip() and not re.match(r"\s*\d+# ", ln)]
    return "\n".join(kept[-6:])


def _default_grpc_port() -> int:
    url = os.environ.get("TRITON_URL", spec.DEFAULT_TRITON_URL)
    return int(url.rsplit(":", 1)[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down", "status", "supervise"])
    ap.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="pid file, log and backends (default: %(default)s)")
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--grpc-port", type=int, default=None, help="default: the port of $TRITON_URL, else 8001")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--no-supervise", action="store_true", help="up: do not start the supervisor that restarts a server that exits")
    args = ap.parse_args(argv)
    server = LocalTriton(args.state_dir, args.repository)
    try:
        if args.command == "up":
            t = time.time()
            st = server.up(args.grpc_port or _default_grpc_port(), args.http_port, args.metrics_port, args.timeout)
            print(f"tritonserver ready at {st.grpc_url} (gRPC), 127.0.0.1:{st.http_port} (HTTP), "
                  f"127.0.0.1:{st.metrics_port} (metrics) in {time.time() - t:.1f} s; pid {st.pid}; log {st.log}")
            if not args.no_supervise:
                print(f"supervisor pid {server.start_supervisor()}: starts it again if it exits without `down` "
                      f"(log {server.state_dir / 'supervisor.log'})")
        elif args.command == "supervise":
            server.supervise()
        elif args.command == "down":
            print("tritonserver stopped" if server.down() else "no tritonserver was running")
        else:
            info = server.status()
            print(json.dumps(info, indent=1))
            return 0 if info.get("ready") else 3
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

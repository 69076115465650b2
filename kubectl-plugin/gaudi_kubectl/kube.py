"""The API server, reached the way the user's kubectl reaches it.

The plugin runs one `kubectl proxy` for its whole run, on a Unix socket in a private
temporary directory, and speaks plain HTTP to it: authentication is kubectl's own
(kubeconfig, contexts, exec credential plugins, `--as`), with no Kubernetes client library
to install. The proxy is read-only (it rejects every method but GET and HEAD) and
accepts only the paths the plugin reads: jobs, pods, events, and each rank's /metrics
through the pod proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH`, which needs
nothing but RBAC get on pods/proxy).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from gaudi_kubectl import names
from gaudi_kubectl.metrics import Target

SCRAPERS = 16  # endpoints scraped at once
# What the proxy lets through: comma-separated regexps that kubectl matches against the
# request's path, without its query.
ACCEPT_PATHS = ",".join(
    (
        rf"^/apis/{names.GROUP.replace('.', '[.]')}/{names.VERSION}/",
        r"^/api/v1/pods$",
        r"^/api/v1/namespaces/[^/]+/(pods|events)(/|$)",
    )
)
REJECT_METHODS = "POST,PUT,PATCH,DELETE,CONNECT,OPTIONS,TRACE"
START_TIMEOUT = 30.0


class KubeError(Exception):
    """Something the user must fix (a kubeconfig, a name, a permission), said as kubectl
    would say it."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass(frozen=True)
class Scraped:
    texts: dict[Target, str | None]  # None: the endpoint did not answer
    problem: str | None = None  # why none could be read, when that is one reason


@dataclass(frozen=True)
class KubectlFlags:
    """kubectl's global flags the plugin passes on, so `kubectl gtj --context X` reads
    what `kubectl get --context X` would."""

    kubeconfig: str | None = None
    context: str | None = None
    cluster: str | None = None
    user: str | None = None
    as_user: str | None = None
    kubectl: str | None = None  # the kubectl binary (default: the one on PATH)

    def args(self) -> list[str]:
        out = []
        for flag, value in (
            ("--kubeconfig", self.kubeconfig),
            ("--context", self.context),
            ("--cluster", self.cluster),
            ("--user", self.user),
            ("--as", self.as_user),
        ):
            if value:
                out.append(f"{flag}={value}")
        return out

    def binary(self) -> str:
        found = self.kubectl or os.environ.get("KUBECTL") or shutil.which("kubectl")
        if not found:
            raise KubeError("kubectl not found on PATH (set KUBECTL to its path)")
        return found


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)  # the proxy checks the Host header
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the proxy gets SIGTERM when the plugin dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Kube:
    """The API through one read-only `kubectl proxy`; use as a context manager."""

    def __init__(self, flags: KubectlFlags | None = None) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise KubeError("kubectl gtj needs Unix sockets (Linux or macOS)")
        self.flags = flags or KubectlFlags()
        self._dir = tempfile.mkdtemp(prefix="kubectl-gtj-")  # 0700: the socket is ours
        self.socket = str(Path(self._dir) / "api.sock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._namespace: subprocess.Popen[bytes] | None = None
        self.namespace = "default"
        self.server = ""  # the API server's URL

    @property
    def same_machine(self) -> bool:
        """Whether the API server listens on this machine's loopback (a local cluster)."""
        host = urlsplit(self.server).hostname or ""
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def __enter__(self) -> Kube:
        try:
            self.start()
        except BaseException:  # an error or a Ctrl-C while starting: leave nothing behind
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        kubectl, flags = self.flags.binary(), self.flags.args()
        self._proc = subprocess.Popen(
            [
                kubectl,
                "proxy",
                *flags,
                f"--unix-socket={self.socket}",
                f"--accept-paths={ACCEPT_PATHS}",
                f"--reject-methods={REJECT_METHODS}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        # The context's namespace and server, read while the proxy starts.
        self._namespace = subprocess.Popen(
            [kubectl, "config", "view", "--minify", *flags, "-o", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode().strip()
                self.close()
                raise KubeError(err or f"kubectl proxy exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.close()
                raise KubeError(f"kubectl proxy did not start in {START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        out, _ = self._namespace.communicate(timeout=START_TIMEOUT)
        self.namespace, self.server = _context(out)

    def _ready(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.socket)
            return True
        except OSError:
            return False

    def close(self) -> None:
        for proc in (self._namespace, self._proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- HTTP ------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30, accept: str = "application/json") -> Response:
        conn = _UnixConnection(self.socket, timeout)
        try:
            conn.request("GET", path, headers={"Accept": accept})
            resp = conn.getresponse()
            return Response(resp.status, resp.read())
        finally:
            conn.close()

    def _items(self, path: str, what: str) -> list[dict[str, Any]]:
        resp = self.get(path)
        if resp.status != 200:
            raise _error(resp, what)
        return list(resp.json().get("items") or [])

    # -- objects ---------------------------------------------------------------------------
    def jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        """The jobs of a namespace (None: every namespace), by namespace and name."""
        base = f"/apis/{names.GROUP}/{names.VERSION}"
        path = f"{base}/{names.PLURAL}" if namespace is None else _ns(base, namespace, names.PLURAL)
        items = self._items(path, names.PLURAL)
        return sorted(items, key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"]))

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        base = f"/apis/{names.GROUP}/{names.VERSION}"
        resp = self.get(f"{_ns(base, namespace, names.PLURAL)}/{quote(name)}")
        if resp.status != 200:
            raise _error(resp, f"gtj/{name}")
        return dict(resp.json())

    def pods(self, namespace: str | None, job: str | None = None) -> list[dict[str, Any]]:
        """Worker pods: one job's, or every job's in a namespace (None: all namespaces)."""
        selector = f"{names.LABEL_JOB_NAME}={job}" if job else names.LABEL_JOB_NAME
        query = urlencode({"labelSelector": selector})
        path = "/api/v1/pods" if namespace is None else _ns("/api/v1", namespace, "pods")
        return self._items(f"{path}?{query}", "pods")

    def events(self, namespace: str, job: str, pods: Iterable[str]) -> list[dict[str, Any]]:
        """The job's events and its worker pods' (the scheduler's, the kubelet's). A user
        who may not read events gets the explanation without them."""
        wanted = set(pods)
        prefix = f"{job}-worker-"
        out: list[dict[str, Any]] = []
        for selector in (
            f"involvedObject.kind={names.KIND},involvedObject.name={job}",
            "involvedObject.kind=Pod",
        ):
            resp = self.get(
                f"{_ns('/api/v1', namespace, 'events')}?{urlencode({'fieldSelector': selector})}"
            )
            if resp.status == 403:
                continue
            if resp.status != 200:
                raise _error(resp, "events")
            items = resp.json().get("items") or []
            if selector.endswith("=Pod"):
                items = [
                    e
                    for e in items
                    if (n := (e.get("involvedObject") or {}).get("name", "")) in wanted
                    or n.startswith(prefix)
                ]
            out += items
        return out

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last lines of a container's log ("" when it cannot be read)."""
        query = urlencode({"container": container, "tailLines": lines})
        path = f"{_ns('/api/v1', namespace, 'pods')}/{quote(pod)}/log?{query}"
        try:
            resp = self.get(path, timeout=10, accept="*/*")  # the log API refuses text/plain
        except OSError:
            return ""
        return resp.body.decode("utf-8", errors="replace") if resp.status == 200 else ""

    # -- metrics ---------------------------------------------------------------------------
    def scrape(self, targets: Sequence[Target], timeout: float = 3) -> Scraped:
        """Every endpoint's /metrics text through the API server's pod proxy, at once."""
        if not targets:
            return Scraped({})
        problems: list[str] = []

        def one(t: Target) -> str | None:
            if t.direct:
                return _read_directly(t, timeout)
            path = (
                f"{_ns('/api/v1', t.namespace, 'pods')}/{quote(t.pod)}:{t.port}"
                f"/proxy/{t.path.lstrip('/')}"
            )
            try:
                resp = self.get(path, timeout=timeout, accept="text/plain")
            except OSError:  # a timeout, a dropped connection: this endpoint only
                return None
            refused = _refused(resp)
            if refused:
                problems.append(refused)
            if resp.status != 200:
                return None
            return resp.body.decode("utf-8", errors="replace")

        with ThreadPoolExecutor(max_workers=min(SCRAPERS, len(targets))) as pool:
            texts = dict(zip(targets, pool.map(one, targets), strict=True))
        return Scraped(texts, problems[0] if problems else None)


def _read_directly(t: Target, timeout: float) -> str | None:
    """GET http://<pod IP>:<port><path> from here (a loopback pod on this machine)."""
    conn = http.client.HTTPConnection(str(t.direct), t.port, timeout=timeout)
    try:
        conn.request("GET", t.path, headers={"Accept": "text/plain"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError:
        return None
    finally:
        conn.close()
    return body.decode("utf-8", errors="replace") if resp.status == 200 else None


def _context(config_view: bytes) -> tuple[str, str]:
    """(namespace, server URL) from `kubectl config view --minify -o json`."""
    try:
        view = json.loads(config_view or b"{}")
    except ValueError:
        return "default", ""
    contexts, clusters = view.get("contexts") or [{}], view.get("clusters") or [{}]
    namespace = (contexts[0].get("context") or {}).get("namespace") or "default"
    server = (clusters[0].get("cluster") or {}).get("server") or ""
    return str(namespace), str(server)


def _refused(resp: Response) -> str | None:
    """Why the API server itself refused a pod proxy request (RBAC, credentials); None for
    anything else, e.g. a 403 that the endpoint or a network filter behind the API server
    answered, which concerns that endpoint alone."""
    if resp.status not in (401, 403):
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("kind") != "Status":
        return None
    if resp.status == 401:
        return "the API server did not accept the credentials for the pod proxy"
    if "pods/proxy" not in str(body.get("message", "")):
        return None
    return (
        "reading the ranks' metrics through the pod proxy is forbidden (RBAC: get on "
        "pods/proxy); pass --prometheus-url to read them from Prometheus"
    )


def _ns(base: str, namespace: str, resource: str) -> str:
    return f"{base}/namespaces/{quote(namespace)}/{resource}"


def _error(resp: Response, what: str) -> KubeError:
    """The API's Status as kubectl prints it."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    message = str(body.get("message") or resp.body[:300].decode(errors="replace")).strip()
    reason = str(body.get("reason") or f"HTTP {resp.status}")
    if resp.status == 404 and not (body.get("details") or {}).get("name"):
        return KubeError(
            f"the GaudiTrainingJob API ({names.PLURAL}.{names.GROUP}) is not served by this "
            "cluster: install the operator's chart (or its CRD) first"
        )
    return KubeError(f"Error from server ({reason}) reading {what}: {message}")


@contextlib.contextmanager
def connected(flags: KubectlFlags) -> Iterator[Kube]:
    kube = Kube(flags)
    with kube:
        yield kube

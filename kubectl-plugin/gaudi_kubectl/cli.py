"""`kubectl gtj`: the command line. kubectl runs `kubectl-gtj` from PATH with every word
after `gtj` (kubectl's own flags go after `gtj` too: `kubectl gtj -n team --context prod`).

    kubectl gtj [JOB] [-n NS | -A] [-w] [--prometheus-url URL] [-o json]
    kubectl gtj why JOB [-n NS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

USAGE = """\
kubectl gtj [JOB] [-n NAMESPACE | -A] [-w] [--prometheus-url URL] [-o json]
       kubectl gtj why JOB [-n NAMESPACE]"""
DESCRIPTION = """\
GaudiTrainingJobs as the demo shows them: phase, world size, step, loss and samples/s per
rank (read from each rank's metrics through the API server's pod proxy, or from
Prometheus with --prometheus-url), restarts, the last failure and the last scale decision.
`kubectl gtj why JOB` explains why a job is Pending, Restarting or Failed and what to do."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl gtj", usage=USAGE, description=DESCRIPTION, allow_abbrev=False
    )
    p.add_argument("words", nargs="*", metavar="JOB | why JOB", help=argparse.SUPPRESS)
    p.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="jobs in every namespace")
    p.add_argument("-w", "--watch", action="store_true", help="redraw every --interval seconds")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (2)")
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("GAUDI3_PROMETHEUS_URL") or None,
        help="read the ranks' metrics from this Prometheus instead of each rank's endpoint "
        "(env GAUDI3_PROMETHEUS_URL)",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument(
        "--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    p.add_argument("--context", help="the kubeconfig context")
    p.add_argument("--cluster", help="the kubeconfig cluster")
    p.add_argument("--user", help="the kubeconfig user")
    p.add_argument("--as", dest="as_user", help="impersonate this user")
    return p


@dataclass(frozen=True)
class Command:
    what: str  # "show" | "why"
    job: str | None
    namespace: str | None  # None: the context's (or every one with all_namespaces)
    all_namespaces: bool = False
    args: argparse.Namespace = field(default_factory=argparse.Namespace)


def command(argv: Sequence[str]) -> Command:
    """What the words ask for; argparse's usage error (exit 2) for what makes no sense."""
    p = parser()
    args = p.parse_args(list(argv))
    words = list(args.words)
    if words[:1] == ["why"]:
        if len(words) != 2:
            p.error("kubectl gtj why needs exactly one job: kubectl gtj why JOB")
        what, job = "why", words[1]
    elif len(words) <= 1:
        what, job = "show", (words[0] if words else None)
    else:
        p.error(f"unexpected arguments: {' '.join(words[1:])}")
    if args.all_namespaces and job is not None:
        p.error("a job cannot be retrieved by name across all namespaces")
    if args.all_namespaces and args.namespace:
        p.error("-n and -A exclude each other")
    if args.interval <= 0:
        p.error("--interval must be positive")
    if what == "why" and (args.watch or args.output != "table"):
        p.error("kubectl gtj why takes neither --watch nor -o")
    return Command(what, job, args.namespace, args.all_namespaces, args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # The cli extra's packages, checked before anything needs them.
        import prometheus_client.parser  # noqa: F401
        import rich.console  # noqa: F401
    except ImportError as exc:
        print(
            f"kubectl-gtj: {exc.name} is missing: pip install 'gaudi-scale-starter[cli]'",
            file=sys.stderr,
        )
        return 1
    cmd = command(sys.argv[1:] if argv is None else argv)
    return run(cmd)


def run(cmd: Command) -> int:
    from gaudi_kubectl.kube import Kube, KubectlFlags, KubeError
    from gaudi_kubectl.prometheus import PrometheusError

    a = cmd.args
    # A closed terminal or a `kill` ends the run like Ctrl-C: the proxy and its socket
    # directory are cleaned up on the way out.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    console = _console()
    flags = KubectlFlags(a.kubeconfig, a.context, a.cluster, a.user, a.as_user)
    try:
        with Kube(flags) as kube:
            namespace = None if cmd.all_namespaces else (cmd.namespace or kube.namespace)
            if cmd.what == "why":
                return _why(kube, namespace or "default", str(cmd.job), console)
            frame = _frame_maker(kube, namespace, cmd)
            if not a.watch:
                show(console, frame())
                return 0
            return _watch(frame, a.interval, console, cmd)
    except (KubeError, PrometheusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if a.watch else 130


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # Piped or in a log: rows unabridged, as kubectl prints them.
        console = Console(highlight=False, width=200)
    return console


def show(console: Any, renderable: Any) -> None:
    """Print; without a terminal, without the spaces rich pads lines with (a pipe, a
    file, a test reads plain lines). A document (`-o json`) is written as it is: never
    wrapped to the terminal's width, which would break its strings."""
    if isinstance(renderable, str):
        sys.stdout.write(renderable.rstrip("\n") + "\n")
        return
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    sys.stdout.write(text + "\n")


# -- kubectl gtj [JOB] ---------------------------------------------------------------------


def _frame_maker(kube: Any, namespace: str | None, cmd: Command) -> Callable[[], Any]:
    """A function that reads the cluster once and returns what to print."""
    from rich.text import Text

    from gaudi_kubectl import metrics, overview
    from gaudi_kubectl.kube import KubeError
    from gaudi_kubectl.prometheus import PrometheusError, query, selector

    url = cmd.args.prometheus_url
    read_from: list[str] = []  # how the last frame read the endpoints, for its note

    def progress_of(
        jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
    ) -> dict[tuple[str, str], metrics.JobProgress]:
        if url:
            try:
                found = metrics.from_prometheus(query(url, selector(namespace, cmd.job)))
            except PrometheusError as exc:
                return {_key(j): metrics.JobProgress(problem=str(exc)) for j in jobs}
            return {_key(j): found.get(_key(j), metrics.JobProgress()) for j in jobs}
        by_job: dict[tuple[str, str], list[metrics.Target]] = {}
        for j in jobs:
            if (j.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue  # its ranks are gone
            mine = [p for p in pods if _pod_key(p) == _key(j)]
            hpus = int((j.get("spec") or {}).get("hpusPerWorker") or 1)
            by_job[_key(j)] = metrics.scrape_targets(mine, hpus, same_machine=kube.same_machine)
        targets = [t for mine in by_job.values() for t in mine]
        read_from[:] = sorted({"directly" if t.direct else "proxy" for t in targets})
        scraped = kube.scrape(targets)
        return {
            _key(j): metrics.from_endpoints(
                {t: scraped.texts.get(t) for t in by_job.get(_key(j), [])}, scraped.problem
            )
            for j in jobs
        }

    def frame() -> Any:
        now = datetime.now(UTC)
        try:
            if cmd.job is not None:
                jobs = [kube.job(namespace, cmd.job)]
                pods = kube.pods(namespace, cmd.job)
            else:
                jobs = kube.jobs(namespace)
                pods = kube.pods(namespace) if jobs and not url else []
            progress = progress_of(jobs, pods)
        except (KubeError, PrometheusError) as exc:
            if not cmd.args.watch:
                raise
            return Text(f"error: {exc}", style="red")  # a watch rides out a blip
        nodes = {p["metadata"]["name"]: (p.get("spec") or {}).get("nodeName") or "-" for p in pods}
        source = _source(url, read_from)
        if cmd.args.output == "json":
            out = [overview.as_json(j, progress[_key(j)], nodes, source) for j in jobs]
            return json.dumps(out[0] if cmd.job else {"items": out}, indent=2)
        if cmd.job is not None:
            return overview.job_detail(jobs[0], progress[_key(jobs[0])], nodes, now, source)
        if not jobs:
            where = "any namespace" if namespace is None else f"{namespace} namespace"
            return Text(f"No GaudiTrainingJobs found in {where}.")
        rows = [overview.job_row(j, progress[_key(j)], now) for j in jobs]
        return overview.jobs_table(rows, all_namespaces=namespace is None)

    return frame


def _source(url: str | None, read_from: list[str]) -> str:
    if url:
        return f"from Prometheus at {url}"
    if read_from == ["directly"]:
        # The API server refuses to proxy to loopback pod IPs; they are this machine's.
        return "from each rank's endpoint, read directly (loopback pod IPs on this machine)"
    if read_from == ["directly", "proxy"]:
        return (
            "from each rank's endpoint (through the API server's pod proxy; loopback pods directly)"
        )
    return "from each rank's endpoint through the API server's pod proxy"


def _key(job: dict[str, Any]) -> tuple[str, str]:
    meta = job.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _pod_key(pod: dict[str, Any]) -> tuple[str, str]:
    from gaudi_kubectl import names

    meta = pod.get("metadata") or {}
    return str(meta.get("namespace", "")), str(
        (meta.get("labels") or {}).get(names.LABEL_JOB_NAME, "")
    )


def _watch(frame: Callable[[], Any], interval: float, console: Any, cmd: Command) -> int:
    """Redraw in place on a terminal (like `watch`); elsewhere print each frame below the
    last, stamped (like `kubectl get -w`)."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def stamped(shown: Any = None) -> Any:
        title = f"Every {interval:g}s: kubectl gtj {' '.join(_words(cmd))}"
        clock = datetime.now().strftime("%H:%M:%S")
        shown = frame() if shown is None else shown
        if isinstance(shown, str):
            shown = Text(shown)  # a document on a terminal: redrawn like any frame
        return Group(Text(f"{title}    {clock}", style="dim"), Text(""), shown)

    if not console.is_terminal:
        while True:
            shown = frame()
            # Documents one after another, as `kubectl get -w -o json` prints them.
            show(console, shown if isinstance(shown, str) else stamped(shown))
            sys.stdout.write("\n")
            sys.stdout.flush()
            time.sleep(interval)
    with Live(stamped(), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(stamped(), refresh=True)


def _words(cmd: Command) -> list[str]:
    out = [cmd.job] if cmd.job else []
    if cmd.all_namespaces:
        out.append("-A")
    elif cmd.namespace:
        out += ["-n", cmd.namespace]
    return out


# -- kubectl gtj why JOB -------------------------------------------------------------------


def _why(kube: Any, namespace: str, name: str, console: Any) -> int:
    from gaudi_kubectl import why

    job = kube.job(namespace, name)
    pods = kube.pods(namespace, name)
    events = kube.events(namespace, name, [p["metadata"]["name"] for p in pods])
    logs = {
        pod: kube.log_tail(namespace, pod, container, why.LOG_LINES)
        for pod, container in why.failed_containers(pods)
    }
    show(console, why.render(why.explain(job, pods, events, datetime.now(UTC), logs)))
    return 0

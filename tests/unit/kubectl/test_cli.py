"""The command line kubectl hands to `kubectl-gtj`, and what the plugin needs installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gaudi_kubectl import names
from gaudi_kubectl.cli import command
from gaudi_kubectl.kube import ACCEPT_PATHS, KubectlFlags
from gaudi_kubectl.prometheus import selector

ROOT = Path(__file__).parents[3]


def test_words_after_gtj_pick_the_view() -> None:
    every = command([])
    assert (every.what, every.job, every.namespace, every.all_namespaces) == (
        "show",
        None,
        None,
        False,
    )
    one = command(["tiny", "-n", "team", "--watch", "--interval", "5"])
    assert (one.what, one.job, one.namespace, one.args.watch, one.args.interval) == (
        "show", "tiny", "team", True, 5.0,
    )  # fmt: skip
    why = command(["why", "tiny", "--context", "prod"])
    assert (why.what, why.job, why.args.context) == ("why", "tiny", "prod")
    assert command(["-A", "--prometheus-url", "http://prom:9090"]).all_namespaces


@pytest.mark.parametrize(
    "argv",
    [["why"], ["why", "a", "b"], ["a", "b"], ["tiny", "-A"], ["-A", "-n", "x"], ["why", "a", "-w"]],
)
def test_what_makes_no_sense_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        command(argv)
    assert exit_.value.code == 2


def test_kubectls_own_flags_go_to_kubectl() -> None:
    flags = KubectlFlags(kubeconfig="/k", context="prod", as_user="alice")
    assert flags.args() == ["--kubeconfig=/k", "--context=prod", "--as=alice"]


def test_the_proxy_lets_through_only_what_the_plugin_reads() -> None:
    import re

    accepted = [re.compile(p) for p in ACCEPT_PATHS.split(",")]

    def ok(url: str) -> bool:
        path = url.split("?")[0]  # kubectl proxy matches the path alone
        return any(p.search(path) for p in accepted)

    assert ok(f"/apis/{names.GROUP}/{names.VERSION}/namespaces/team/{names.PLURAL}/tiny")
    assert ok("/api/v1/namespaces/team/pods/tiny-worker-0:9400/proxy/metrics")
    assert ok("/api/v1/namespaces/team/events?fieldSelector=x")
    assert ok("/api/v1/pods?labelSelector=x")
    assert not ok("/api/v1/namespaces/team/secrets")
    assert not ok("/apis/apps/v1/deployments")


def test_prometheus_selector_narrows_to_a_namespace_and_a_job() -> None:
    assert selector("team", "tiny").endswith(',gtj_namespace="team",gtj="tiny"}')
    assert "gtj_namespace" not in selector(None)


def test_the_plugin_loads_none_of_the_operators_dependencies() -> None:
    heavy = {"kopf", "kubernetes", "kubernetes_asyncio", "pydantic", "httpx", "typer", "torch"}
    code = (
        "import sys, gaudi_kubectl.cli, gaudi_kubectl.kube, gaudi_kubectl.why, "
        "gaudi_kubectl.overview, gaudi_kubectl.prometheus, gaudi_kubectl.metrics; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(ROOT / "kubectl-plugin")},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(out.stdout.split())
    assert {"rich", "prometheus_client"} <= loaded
    assert loaded & (heavy | {"gaudi_operator", "gaudi_devtools", "gaudi_train"}) == set()


def test_the_plugins_names_are_the_operators() -> None:
    from gaudi_operator import api

    for name in (
        "GROUP", "VERSION", "PLURAL", "KIND", "LABEL_JOB_NAME", "LABEL_WORKER_INDEX",
        "LABEL_GENERATION", "ANNOTATION_PROMETHEUS_SCRAPE", "ANNOTATION_PROMETHEUS_PORT",
        "ANNOTATION_PROMETHEUS_PATH", "GAUDI_RESOURCE", "METRICS_PORT",
    ):  # fmt: skip
        assert getattr(names, name) == getattr(api, name), name


def test_the_contexts_namespace_and_server_come_from_kubectl_config_view() -> None:
    from gaudi_kubectl.kube import _context

    view = {
        "contexts": [{"name": "dev", "context": {"cluster": "c", "namespace": "team"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
    }
    assert _context(json.dumps(view).encode()) == ("team", "https://127.0.0.1:6443")
    assert _context(b"") == ("default", "")
    assert _context(b'{"contexts": [{"context": {}}]}') == ("default", "")

"""hack/toolchain.sh's sets: `make demo` builds only what the demo runs, `make setup` (and so
`make test`) everything; a tool outside every set is refused by name."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# What the demo never starts: built only when a test or another command needs it.
NOT_FOR_THE_DEMO = {
    "helm",
    "helm-docs",
    "kubeconform",
    "kubeschemas",
    "openapi",
    "kstatus",
    "kueue",
    "registry",
    "actionlint",
    "skopeo",
    "kubeflow-training-operator",
}


def toolchain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "hack" / "toolchain.sh"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def listed(*args: str) -> set[str]:
    out = toolchain("--list", *args)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_the_demo_set_is_the_control_plane_kwok_prometheus_and_the_real_node_parts() -> None:
    assert listed("demo") == {
        "kubernetes",
        "etcd",
        "kwok",
        "kubelet",
        "coredns",
        "prometheus",
        "node-runtime",
        "image-tools",
    }
    assert not listed("demo") & NOT_FOR_THE_DEMO


def test_the_full_set_has_every_tool_but_the_benchmark_peer() -> None:
    assert listed() == listed("all")
    assert listed("all") == listed("demo") | (NOT_FOR_THE_DEMO - {"kubeflow-training-operator"})


def test_an_unknown_tool_is_refused_with_the_known_names() -> None:
    out = toolchain("--list", "kubectl-gtj")
    assert out.returncode == 1
    assert "unknown tool 'kubectl-gtj'" in out.stderr and "sets: all, demo" in out.stderr


def test_make_demo_builds_the_demo_set_and_make_setup_all_of_it() -> None:
    def commands(target: str) -> str:
        out = subprocess.run(
            ["make", "-n", "--no-print-directory", "-C", str(ROOT), target],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "hack/toolchain.sh demo" in commands("demo")
    assert "hack/toolchain.sh all" not in commands("demo")
    assert "hack/toolchain.sh all" in commands("setup")

"""The documentation site builds strictly: `mkdocs build --strict` (mkdocs.yml at the root)
fails on any warning, so a broken link between pages, a missing anchor, a page missing from
the nav or a nav entry without its page fails this test. Links from docs/ to the rest of the
repository go through hack/mkdocs_hooks.py, which checks them too (tested below on a
throw-away repository)."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import markdown
import pytest

ROOT = Path(__file__).resolve().parents[3]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "hack" / "mkdocs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def test_the_site_builds_strictly_without_a_warning(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    took = time.monotonic() - start
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    assert (tmp_path / "site" / "troubleshooting" / "index.html").is_file()
    print(f"mkdocs build --strict took {took:.1f} s")


def render(repo: Path, page: str, text: str) -> str:
    ext = hooks.RepoLinksExtension(repo, "docs", "https://github.com/o/r")
    ext.page = page
    return markdown.Markdown(extensions=[ext]).convert(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "job.yaml").write_text("kind: GaudiTrainingJob\n")
    readme = "# Title\n\n## The CRD: installed, kept\n\n## Two\n## Two\n"
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_links_out_of_docs_point_to_the_repository(repo: Path) -> None:
    html = render(
        repo,
        "reference/api.md",
        "[a](../../examples/job.yaml) [b](../../examples/)"
        " [c](../../README.md#the-crd-installed-kept) [d](../../README.md#two-1)"
        " [e](../getting-started.md) [f](https://example.com/x)",
    )
    assert 'href="https://github.com/o/r/blob/main/examples/job.yaml"' in html
    assert 'href="https://github.com/o/r/tree/main/examples"' in html
    assert 'href="https://github.com/o/r/blob/main/README.md#the-crd-installed-kept"' in html
    assert 'href="https://github.com/o/r/blob/main/README.md#two-1"' in html
    assert 'href="../getting-started.md"' in html  # a page of the site: left to MkDocs
    assert 'href="https://example.com/x"' in html


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        ("../examples/gone.yaml", "examples/gone.yaml is not in the repository"),
        ("../README.md#measured", "README.md has no heading for #measured"),
        ("../../../etc/passwd", "leaves the repository"),
    ],
)
def test_a_broken_link_out_of_docs_is_a_warning(
    repo: Path, link: str, complaint: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.repo_links"):
        render(repo, "install.md", f"[x]({link})")
    assert complaint in caplog.text


def test_links_in_code_are_not_touched(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.repo_links"):
        html = render(repo, "install.md", "    [x](../examples/gone.yaml)\n\n`[y](../nope)`\n")
    assert caplog.text == ""
    assert "github.com" not in html

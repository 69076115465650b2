"""MkDocs hook: links from docs/ to the rest of the repository.

The pages link to files outside docs/ (`../examples/elastic-4-workers.yaml`,
`../charts/gaudi-operator/README.md#the-crd-installed-upgraded-kept`), which works on
GitHub but not in the built site, where only docs/ is published. MkDocs would warn about
each such link, and `strict: true` would fail the build; turning that warning off
(`validation: links: not_found: info`) would hide the broken links between pages too.

Instead, this hook rewrites every link that leaves docs/ into a link to the file in the
repository (`repo_url`/blob/main/...; a folder gets /tree/) *and checks it*: a target that
does not exist in this checkout, or a `#anchor` that no heading of the target Markdown file
makes, is a warning, so `mkdocs build --strict` still fails on a broken link. Links inside
docs/ are left to MkDocs' own validation.

It runs as a Markdown tree processor just before MkDocs' own link processor (priority 0),
so links in code blocks are never touched.
"""

from __future__ import annotations

import logging
import posixpath
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from xml.etree.ElementTree import Element

from markdown import Extension, Markdown
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.repo_links")

BRANCH = "main"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings (and explicit ids)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # link text only
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", line))
    return found


@cache
def anchors_of(path: Path) -> frozenset[str]:
    return frozenset(github_anchors(path.read_text(encoding="utf-8")))


class RepoLinks(Treeprocessor):
    def __init__(self, md: Markdown, repo: Path, docs: str, repo_url: str, page: str) -> None:
        super().__init__(md)
        self.repo, self.docs, self.repo_url, self.page = repo, docs, repo_url.rstrip("/"), page

    def run(self, root: Element) -> None:
        for el in root.iter():
            key = {"a": "href", "img": "src"}.get(el.tag)
            url = el.get(key) if key else None
            if key and url:
                el.set(key, self.rewrite(url))

    def rewrite(self, url: str) -> str:
        scheme, netloc, path, query, fragment = urlsplit(url)
        if scheme or netloc or not path or path.startswith("/"):
            return url
        # The link as the repository sees it: relative to the page's folder in docs/.
        target = posixpath.normpath(posixpath.join(self.docs, posixpath.dirname(self.page), path))
        if target == self.docs or target.startswith(self.docs + "/"):
            return url  # a page of the site: MkDocs checks it
        if target.startswith("../"):
            log.warning("%s: link %r leaves the repository", self.page, url)
            return url
        file = self.repo / target
        if not file.exists():
            log.warning("%s: link %r: %s is not in the repository", self.page, url, target)
            return url
        if fragment and file.suffix == ".md" and fragment not in anchors_of(file):
            log.warning("%s: link %r: %s has no heading for #%s", self.page, url, target, fragment)
        kind = "tree" if file.is_dir() else "blob"
        return urlunsplit(("", "", f"{self.repo_url}/{kind}/{BRANCH}/{target}", query, fragment))


class RepoLinksExtension(Extension):
    def __init__(self, repo: Path, docs: str, repo_url: str) -> None:
        super().__init__()
        self.repo, self.docs, self.repo_url = repo, docs, repo_url
        self.page = ""

    def extendMarkdown(self, md: Markdown) -> None:  # Markdown's name
        processor = RepoLinks(md, self.repo, self.docs, self.repo_url, self.page)
        md.treeprocessors.register(processor, "repo_links", 1)  # before MkDocs' relpath (0)


_EXTENSION: RepoLinksExtension | None = None


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    global _EXTENSION
    repo = Path(config.config_file_path).resolve().parent
    docs = Path(config.docs_dir).resolve().relative_to(repo).as_posix()
    if not config.repo_url:
        raise ValueError("mkdocs.yml needs repo_url: links out of docs/ point there")
    _EXTENSION = RepoLinksExtension(repo, docs, config.repo_url)
    config.markdown_extensions.append(_EXTENSION)  # type: ignore[arg-type]
    return config


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    # Pages render one at a time: the extension's processor is made per page, with its path.
    if _EXTENSION is not None:
        _EXTENSION.page = page.file.src_uri
    return markdown

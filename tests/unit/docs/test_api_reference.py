"""docs/reference/api.md is what hack/apiref.py generates from the CRD now (`make crd`
regenerates it), and it documents every field of spec and status with its type, default,
validation and description."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "gauditrainingjobs.yaml"
PAGE = ROOT / "docs" / "reference" / "api.md"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("apiref", ROOT / "hack" / "apiref.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


apiref = _load()


def generated() -> str:
    text = CRD.read_text()
    return apiref.render(yaml.safe_load(text), text)


def test_the_committed_api_reference_is_what_the_generator_writes() -> None:
    assert PAGE.read_text() == generated(), "docs/reference/api.md is stale: run `make crd`"


def test_check_mode_fails_on_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(generated().replace("Samples per optimizer step", "Samples per step"))
    assert apiref.main(["--check", str(CRD), str(stale)]) == 1
    assert apiref.main([str(CRD), str(stale)]) == 0
    assert apiref.main(["--check", str(CRD), str(stale)]) == 0


def fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section, field name, schema) of every field below spec and status but the template."""
    for name, sub in (schema.get("properties") or {}).items():
        full = f"{path}.{name}"
        yield path, name, sub
        if full == "spec.template":
            continue
        if sub.get("type") == "object":
            yield from fields(sub, full)
        items = sub.get("items") or {}
        if sub.get("type") == "array" and items.get("type") == "object":
            yield from fields(items, f"{full}[]")


def sections(page: str) -> dict[str, list[str]]:
    """Heading text -> the table rows under it."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in page.splitlines():
        if line.startswith("#"):
            current = line.lstrip("#").strip()
            out[current] = []
        elif line.startswith("| `"):
            out[current].append(line)
    return out


def test_every_field_of_spec_and_status_has_a_row_with_its_facts() -> None:
    root = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    page = sections(PAGE.read_text())
    count = 0
    for top in ("spec", "status"):
        for section, name, sub in fields(root["properties"][top], top):
            rows = [r for r in page.get(section, []) if r.startswith(f"| `{name}` |")]
            assert len(rows) == 1, f"{section}.{name}: no row under ### {section}"
            row = rows[0]
            count += 1
            if "default" in sub:
                assert apiref.code(sub["default"]) in row, f"{section}.{name}: default"
            for key in ("minimum", "maximum"):
                if key in sub:
                    assert str(sub[key]) in row, f"{section}.{name}: {key}"
            for value in sub.get("enum", []):
                assert f"`{value}`" in row, f"{section}.{name}: enum {value}"
            first_words = " ".join(str(sub.get("description", "")).split()[:4])
            assert apiref.cell(first_words) in row, f"{section}.{name}: description"
    assert count > 100  # spec and status have well over a hundred fields


def test_cel_messages_sit_on_the_field_they_name() -> None:
    page = sections(PAGE.read_text())
    [replicas] = [r for r in page["spec.workers"] if r.startswith("| `replicas` |")]
    assert "spec.workers.replicas must be &gt;= spec.workers.minReplicas" in replicas
    [gbs] = [r for r in page["spec.batch"] if r.startswith("| `globalBatchSize` |")]
    # from the rule on spec, whose fieldPath names .batch.globalBatchSize
    assert "microBatchSize \\* spec.hpusPerWorker \\* spec.workers.replicas" in gbs
    [hpus] = [r for r in page["spec"] if r.startswith("| `hpusPerWorker` |")]
    assert "is immutable" in hpus


def test_the_template_is_one_row_linking_kubernetes_pod_template_spec() -> None:
    text = PAGE.read_text()
    [row] = [r for r in sections(text)["spec"] if r.startswith("| `template` |")]
    assert "kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-template-v1" in row
    assert "HABANA_VISIBLE_DEVICES" in row  # our one rule inside it
    assert not any(h.startswith("spec.template") for h in sections(text))

#!/usr/bin/env python3
"""Make kubeconform's JSON schemas offline, from OpenAPI documents we already have.

kubeconform normally downloads its schemas; nothing can be downloaded here, so this turns
the pinned Kubernetes module's ``api/openapi-spec/swagger.json`` and CustomResourceDefinitions
(ours, the Prometheus Operator's) into files in the layout this template names:

    <dir>/{{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json

e.g. ``deployment-apps-v1-strict.json``. The ``-strict`` variants close every object that
lists its properties (``additionalProperties: false``), which is what ``kubeconform -strict``
expects; objects that keep unknown fields (``x-kubernetes-preserve-unknown-fields``) stay open.

    kubeschemas.py kubernetes SWAGGER.json OUT_DIR
    kubeschemas.py crd OUT_DIR CRD.yaml|CRD.json...

Standard library only for JSON input (toolchain.sh runs it with any python3); YAML CRDs
need PyYAML.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# Sub-schema keywords whose values are one schema, a list of schemas, or a name->schema map.
_ONE = ("items", "additionalProperties", "not")
_MANY = ("allOf", "anyOf", "oneOf")
_MAP = ("properties", "patternProperties", "definitions")


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's ``{{ .KindSuffix }}``: the group's first label, then the version."""
    return f"-{group.split('.')[0]}-{version}" if group else f"-{version}"


def file_name(kind: str, group: str, version: str, strict: bool) -> str:
    return f"{kind.lower()}{kind_suffix(group, version)}{'-strict' if strict else ''}.json"


def _children(node: Schema) -> Iterator[Schema]:
    for k in _ONE:
        if isinstance(node.get(k), dict):
            yield node[k]
    for k in _MANY:
        yield from (s for s in node.get(k, []) if isinstance(s, dict))
    for k in _MAP:
        yield from (s for s in node.get(k, {}).values() if isinstance(s, dict))


def adapt(node: Schema, strict: bool) -> Schema:
    """Rewrite Kubernetes' OpenAPI dialect into plain draft-4 JSON Schema, in place."""
    if node.pop("x-kubernetes-int-or-string", False) or node.get("format") == "int-or-string":
        for k in ("type", "format"):
            node.pop(k, None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    open_ended = node.get("x-kubernetes-preserve-unknown-fields") is True
    if strict and "properties" in node and "additionalProperties" not in node and not open_ended:
        node["additionalProperties"] = False
    for child in _children(node):
        adapt(child, strict)
    return node


def kubernetes(swagger: Path, out: Path) -> int:
    """One shared ``_definitions[-strict].json`` and one small file per kind that refers to it."""
    defs: dict[str, Schema] = json.loads(swagger.read_text())["definitions"]
    # The API server takes a number where a quantity is expected (`cpu: 1`); the document says
    # only "string".
    defs[QUANTITY] = {
        "description": defs[QUANTITY].get("description", ""),
        "oneOf": [{"type": "string"}, {"type": "number"}],
    }
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for strict in (False, True):
        suffix = "-strict" if strict else ""
        adapted = {name: adapt(copy.deepcopy(d), strict) for name, d in defs.items()}
        (out / f"_definitions{suffix}.json").write_text(json.dumps({"definitions": adapted}))
        for name, d in defs.items():
            for gvk in d.get("x-kubernetes-group-version-kind", []):
                ref = {"$ref": f"_definitions{suffix}.json#/definitions/{name}"}
                path = out / file_name(gvk["kind"], gvk["group"], gvk["version"], strict)
                path.write_text(json.dumps(ref))
                count += 1
    return count


def _load(path: Path) -> list[Any]:
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    import yaml  # only YAML input needs it

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_schemas(crd: Schema) -> Iterator[tuple[str, Schema]]:
    """(file name, schema) for every served version of a CRD, loose and strict."""
    spec = crd["spec"]
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        base = v["schema"]["openAPIV3Schema"]
        for strict in (False, True):
            name = file_name(spec["names"]["kind"], spec["group"], v["name"], strict)
            yield name, adapt(copy.deepcopy(base), strict)


def crds(out: Path, files: list[Path]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for f in files:
        for doc in _load(f):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            for name, schema in crd_schemas(doc):
                (out / name).write_text(json.dumps(schema))
                count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "kubernetes":
        n = kubernetes(Path(argv[1]), Path(argv[2]))
    elif len(argv) >= 3 and argv[0] == "crd":
        n = crds(Path(argv[1]), [Path(a) for a in argv[2:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if n == 0:
        print("no schema written: no kind found in the input", file=sys.stderr)
        return 1
    print(f"{n} schema files in {argv[2] if argv[0] == 'kubernetes' else argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

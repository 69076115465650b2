"""A small in-memory API server for the effect layer's unit tests: the calls the reconciler
and the status writer make (`kube.create`, merge-patching a job's status, pod deletes with
uid preconditions, custom objects), with resourceVersions, 409s, 404s and injected 403s,
and a count of every request by verb and resource, as kube-apiserver's
`apiserver_request_total` counts them. Behaviour against the real API server is proven by
the cluster tests; this is for "does a pass write twice", fast."""

from __future__ import annotations

import base64
import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes_asyncio.client import V1ObjectMeta, V1OwnerReference, V1Secret
from kubernetes_asyncio.client.exceptions import ApiException

from gaudi_operator.clients import kube
from gaudi_operator.runtime.status_writer import apply_merge_patch


def api_error(status: int, message: str) -> ApiException:
    err = ApiException(status=status, reason=message)
    err.body = json.dumps({"kind": "Status", "code": status, "message": message})
    return err


_SERVERS = itertools.count(1)


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.requests: Counter[tuple[str, str]] = Counter()  # (verb, resource)
        self.events: list[dict[str, Any]] = []
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)
        self._server = next(_SERVERS)
        # Called before every request: (verb, plural, body) -> an error to raise, or None.
        self.fault: Callable[[str, str, Mapping[str, Any]], ApiException | None] = lambda *_: None
        self.custom = _Custom(self)
        self.core = _Core(self)
        self.api_client = _ApiClient(self)

    def clients(self) -> kube.Clients:
        return kube.Clients(self.api_client, self.core, self.custom)  # type: ignore[arg-type]

    # --- the store ------------------------------------------------------------------------

    def add(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", ""), meta["name"])
        if key in self.objects:
            raise api_error(409, f'{plural} "{meta["name"]}" already exists')
        # Unique across fake servers: the operator keeps some state by uid process-wide
        # (its own deletions), and one test's pod must not be another's.
        meta.setdefault("uid", f"uid-{self._server}-{next(self._uid)}")
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        try:
            return self.objects[(plural, ns, name)]
        except KeyError:
            raise api_error(404, f'{plural} "{name}" not found') from None

    def pods(self, ns: str) -> list[dict[str, Any]]:
        return [o for (p, n, _), o in sorted(self.objects.items()) if p == "pods" and n == ns]

    def writes(self, resource: str | None = None) -> int:
        """Requests that change something (POST, PATCH, PUT, DELETE), as the API server's
        counters would show them, for one resource or all."""
        return sum(
            n
            for (verb, res), n in self.requests.items()
            if verb != "GET" and (resource is None or res == resource)
        )

    def _count(self, verb: str, resource: str, body: Mapping[str, Any] | None = None) -> None:
        self.requests[(verb, resource)] += 1
        err = self.fault(verb, resource, body or {})
        if err is not None:
            raise err


class _ApiClient:
    """`kube.create` POSTs through `call_api` with a collection path."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api

    async def call_api(self, path: str, method: str, **kw: Any) -> None:
        parts = path.strip("/").split("/")  # api/v1/namespaces/<ns>/<plural>[/<name>]
        ns, plural = parts[3], parts[4]
        body = copy.deepcopy(kw["body"])
        if method == "PATCH":
            self._merge_patch(ns, plural, parts[5], body)
            return
        assert method == "POST", method
        self.api._count("POST", plural, body)
        body.setdefault("metadata", {})["namespace"] = ns
        if plural == "events":
            self.api.events.append(body)
            return
        if plural == "pods":
            body.setdefault("status", {"phase": "Pending"})
        if plural == "secrets":
            # As the API server stores it: stringData merged into data, base64-encoded.
            data = body.setdefault("data", {})
            for k, v in (body.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(v.encode()).decode()
        self.api.add(plural, body)

    def _merge_patch(self, ns: str, plural: str, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch of metadata (what the operator patches on pods: a spare's
        labels and annotations); a uid that is not the object's is refused (422), as the
        API server refuses a change of an immutable field."""
        self.api._count("PATCH", plural, patch)
        obj = self.api.get(plural, ns, name)
        meta = patch.get("metadata") or {}
        if meta.get("uid") not in (None, obj["metadata"]["uid"]):
            raise api_error(422, f'{plural} "{name}" is invalid: metadata.uid: field is immutable')
        for part in ("labels", "annotations"):
            have = obj["metadata"].setdefault(part, {})
            for k, v in (meta.get(part) or {}).items():
                if v is None:
                    have.pop(k, None)
                else:
                    have[k] = v
        obj["metadata"]["resourceVersion"] = str(next(self.api._rv))

    async def close(self) -> None:
        return None


class _Custom:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    async def get_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str
    ) -> dict[str, Any]:
        self.api._count("GET", plural)
        return copy.deepcopy(self.api.get(plural, ns, name))

    async def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.api._count("POST", plural, body)
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["namespace"] = ns
        return self.api.add(plural, body)

    async def patch_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        ns: str,
        plural: str,
        name: str,
        body: dict[str, Any],
        **_: Any,
    ) -> dict[str, Any]:
        self.api._count("PATCH", plural + "/status", body)
        obj = self.api.get(plural, ns, name)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise api_error(409, "the object has been modified")
        obj["status"] = apply_merge_patch(obj.get("status") or {}, body.get("status") or {})
        obj["metadata"]["resourceVersion"] = str(next(self.api._rv))
        return copy.deepcopy(obj)

    async def delete_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str, **_: Any
    ) -> None:
        self.api._count("DELETE", plural)
        self.api.get(plural, ns, name)
        del self.api.objects[(plural, ns, name)]


class _Core:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    async def read_namespaced_secret(self, name: str, ns: str, **_: Any) -> V1Secret:
        """A typed model, as kubernetes_asyncio returns it (the restartInPlace token)."""
        self.api._count("GET", "secrets")
        obj = copy.deepcopy(self.api.get("secrets", ns, name))
        meta = obj["metadata"]
        refs = [
            V1OwnerReference(
                api_version=r["apiVersion"],
                kind=r["kind"],
                name=r["name"],
                uid=r["uid"],
                controller=r.get("controller"),
            )
            for r in meta.get("ownerReferences") or []
        ]
        return V1Secret(
            metadata=V1ObjectMeta(
                name=meta["name"], namespace=ns, uid=meta["uid"], owner_references=refs
            ),
            data=obj.get("data"),
        )

    async def delete_namespaced_secret(
        self, name: str, ns: str, body: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        self.api._count("DELETE", "secrets", body)
        secret = self.api.get("secrets", ns, name)
        want = ((body or {}).get("preconditions") or {}).get("uid")
        if want and want != secret["metadata"]["uid"]:
            raise api_error(409, "Precondition failed: UID in precondition")
        del self.api.objects[("secrets", ns, name)]

    async def delete_namespaced_pod(
        self, name: str, ns: str, body: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        self.api._count("DELETE", "pods", body)
        pod = self.api.get("pods", ns, name)
        want = ((body or {}).get("preconditions") or {}).get("uid")
        if want and want != pod["metadata"]["uid"]:
            raise api_error(409, "Precondition failed: UID in precondition")
        del self.api.objects[("pods", ns, name)]

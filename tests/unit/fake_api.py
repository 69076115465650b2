"""A small in-memory API server for the effect layer's unit tests: the calls the reconciler
and the status writer make through `kube.Clients` (`kube.create`, merge-patching a job's
status, pod deletes with uid preconditions, custom objects), answered in-process, with
resourceVersions, 409s, 404s and injected 403s, and a count of every request by verb and
resource, as kube-apiserver's `apiserver_request_total` counts them. Behaviour against
the real API server is proven by the cluster tests; this is for "does a pass write
twice", fast."""

from __future__ import annotations

import base64
import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from gaudi_operator.clients import kube
from gaudi_operator.runtime.status_writer import apply_merge_patch


def api_error(status: int, message: str) -> kube.ApiError:
    body = json.dumps({"kind": "Status", "code": status, "message": message})
    return kube.ApiError(status, message, body)


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
        self.fault: Callable[[str, str, Mapping[str, Any]], kube.ApiError | None] = lambda *_: None

    def clients(self) -> kube.Clients:
        return _FakeClients(self)

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


class _FakeClients(kube.Clients):
    """`kube.Clients` with its one HTTP call answered from the store: every method the
    operator calls (get, post, patch, delete, kube.create) goes through `request`."""

    def __init__(self, api: FakeApi) -> None:  # no session, no credentials
        self.api = api

    async def close(self) -> None:
        return None

    async def request(
        self, method: str, path: str, *, body: Any = None, answer: bool = True, **_: Any
    ) -> Any:
        # /api/v1/namespaces/<ns>/<plural>[/<name>[/<sub>]] or the same under /apis/<g>/<v>
        parts = path.strip("/").split("/")
        parts = parts[2:] if parts[0] == "api" else parts[3:]
        assert parts[0] == "namespaces", path
        ns, plural, rest = parts[1], parts[2], parts[3:]
        name, sub = [*rest, "", ""][:2]
        body = copy.deepcopy(body)
        if method == "POST":
            got = self._create(ns, plural, body)
        elif method == "GET":
            self.api._count("GET", plural)
            got = copy.deepcopy(self.api.get(plural, ns, name))
        elif method == "PATCH" and sub == "status":
            got = self._patch_status(ns, plural, name, body)
        elif method == "PATCH":
            got = self._merge_patch(ns, plural, name, body)
        else:
            assert method == "DELETE", method
            got = self._delete(ns, plural, name, body)
        return got if answer else None

    def _create(self, ns: str, plural: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.api._count("POST", plural, body)
        body.setdefault("metadata", {})["namespace"] = ns
        if plural == "events":
            self.api.events.append(body)
            return None
        if plural == "pods":
            body.setdefault("status", {"phase": "Pending"})
        if plural == "secrets":
            # As the API server stores it: stringData merged into data, base64-encoded.
            data = body.setdefault("data", {})
            for k, v in (body.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(v.encode()).decode()
        return self.api.add(plural, body)

    def _merge_patch(
        self, ns: str, plural: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
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
        return copy.deepcopy(obj)

    def _patch_status(
        self, ns: str, plural: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.api._count("PATCH", plural + "/status", body)
        obj = self.api.get(plural, ns, name)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise api_error(409, "the object has been modified")
        obj["status"] = apply_merge_patch(obj.get("status") or {}, body.get("status") or {})
        obj["metadata"]["resourceVersion"] = str(next(self.api._rv))
        return copy.deepcopy(obj)

    def _delete(self, ns: str, plural: str, name: str, body: dict[str, Any] | None) -> None:
        """With the uid precondition the operator sends (pods, secrets, jobs)."""
        self.api._count("DELETE", plural, body)
        obj = self.api.get(plural, ns, name)
        want = ((body or {}).get("preconditions") or {}).get("uid")
        if want and want != obj["metadata"]["uid"]:
            raise api_error(409, "Precondition failed: UID in precondition")
        del self.api.objects[(plural, ns, name)]

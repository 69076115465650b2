"""A stand-in for Intel's Gaudi Prometheus metric exporter: one per simulated node, each
scraped by the local cluster's real Prometheus, with faults a test injects per card.

The schema is copied from HabanaAI/gaudi-metric-exporter, release 1.24.0-1007 (commit
2d50e44; https://github.com/HabanaAI/gaudi-metric-exporter), the exporter that
docs.habana.ai "Prometheus Metric Exporter" deploys, and checked against that release's
binary (tests/unit/devtools/test_gaudi_exporter.py holds its output):

- exporter.go `Collect`: the families below, all gauges, each card's series labelled
  `Serial`, `UUID`, `device` (the serial again), `id` (the card's index), `fit` and `spi`
  (the U-Boot and kernel firmware versions, from sysfs), `driver` (the driver's version),
  `pod_namespace` and `pod_name`; `habanalabs_nic_port_status` adds `port` and `port_type`
  (`internal`: scale-up, `external`: scale-out) with 1 for a link up and 0 for down. There
  is no node label. `Collect` builds every descriptor with an empty help text, so the
  families' `# HELP` lines are empty; samples.go's descriptions only reach `Describe`.
- kube.go: `habanalabs_kube_info{podName,namespace,podIP,node,hostname} 1` inside
  Kubernetes, from KUBE_* variables Intel's DaemonSet does not set (empty) and HOSTNAME
  (the node's: the DaemonSet runs with hostNetwork). The pod holding a card comes from the
  kubelet's pod-resources API (`List`), keyed by the device id, which the device plugin
  sets to the card's serial (HabanaAI/habanalabs-k8s-device-plugin habanalabs.go); a card
  no pod holds has empty `pod_name`/`pod_namespace`.
- rhlml/src/lib.rs: every field it fails to read is reported as 0 (`unwrap_or(0)`; the
  serial as "", the UUID as "na"), a port whose link state it cannot read as down
  (rhlml/hlml/src/device.rs `ports_status`). When rhlml itself fails (e.g. the port masks
  are unreadable: `.expect`), `Collect` returns nothing; when pod-resources cannot be
  listed, only `habanalabs_kube_info`.
- main.go: at most one scrape every 5 s; others get HTTP 429.

Here the pods come from the API server instead of a kubelet: every pod bound to the node
that requests `habana.ai/gaudi` gets the lowest free cards by serial when first seen and
keeps them until it finishes or is deleted, as the kubelet's device manager allocates them
(the plugin states no preference). Not served: client_golang's own go_*, process_* and
promhttp_* families. The values of a healthy card are plausible, not Intel's figures: a
Gaudi 3 has 128 GB of HBM and 21 scale-up and 3 scale-out ports (docs.habana.ai "Intel
Gaudi Network Configuration"); which port numbers are external is made up (21-23).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GAUDI_RESOURCE = "habana.ai/gaudi"
UPSTREAM = "HabanaAI/gaudi-metric-exporter 1.24.0-1007"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # client_golang's text format
# main.go rateLimit: rate.Every(5 * time.Second), burst 1.
UPSTREAM_MIN_SCRAPE_INTERVAL = 5.0

# rhlml's JSON fields (rhlml/src/lib.rs `Metrics`) that are numbers.
FIELDS = (
    "power_default_limit",
    "power_usage",
    "temperature_on_board",
    "temperature_on_chip",
    "temperature_threshold_gpu",
    "temperature_threshold_memory",
    "temperature_threshold_shutdown",
    "temperature_threshold_slowdown",
    "pending_rows_single_bit_ecc_errors",
    "pending_rows_double_bit_ecc_errors",
    "pending_rows_state",
    "pcie_rx",
    "pcie_tx",
    "pcie_replay_count",
    "pci_link_width",
    "pci_link_speed",
    "memory_total_bytes",
    "memory_used_bytes",
    "memory_free_bytes",
    "ecc_current_feature_mode",
    "energy",
    "clock_current",
    "clock_max",
    "utilization",
)

# exporter.go Collect: family -> the rhlml field it reports (an int is a constant).
FAMILIES: Mapping[str, str | int] = {
    "habanalabs_clock_soc_max_mhz": "clock_max",
    "accelerator_memory_clock_hertz": 18000000,
    "habanalabs_clock_soc_mhz": "clock_current",
    "accelerator_sm_clock_hertz": "clock_current",
    "habanalabs_device_config": 1,
    "habanalabs_ecc_feature_mode": "ecc_current_feature_mode",
    "habanalabs_energy": "energy",
    "habanalabs_memory_free_bytes": "memory_free_bytes",
    "habanalabs_memory_total_bytes": "memory_total_bytes",
    "accelerator_memory_total_bytes": "memory_total_bytes",
    "habanalabs_memory_used_bytes": "memory_used_bytes",
    "accelerator_memory_used_bytes": "memory_used_bytes",
    "habanalabs_pci_link_speed": "pci_link_speed",
    "habanalabs_pci_link_width": "pci_link_width",
    "habanalabs_pcie_receive_throughput": "pcie_rx",
    "habanalabs_pcie_replay_count": "pcie_replay_count",
    "habanalabs_pcie_rx": "pcie_rx",
    "habanalabs_pcie_transmit_throughput": "pcie_tx",
    "habanalabs_pcie_tx": "pcie_tx",
    "habanalabs_pending_rows_state": "pending_rows_state",
    "habanalabs_pending_rows_with_double_bit_ecc_errors": "pending_rows_double_bit_ecc_errors",
    "habanalabs_pending_rows_with_single_bit_ecc_errors": "pending_rows_single_bit_ecc_errors",
    "habanalabs_power_default_limit_mW": "power_default_limit",
    "habanalabs_power_mW": "power_usage",
    "accelerator_power_usage_watts": "power_usage",  # sic: milliwatts, as upstream
    "habanalabs_temperature_onboard": "temperature_on_board",
    "habanalabs_temperature_onchip": "temperature_on_chip",
    "accelerator_temperature_celcius": "temperature_on_chip",  # sic
    "habanalabs_temperature_threshold_gpu": "temperature_threshold_gpu",
    "habanalabs_temperature_threshold_memory": "temperature_threshold_memory",
    "habanalabs_temperature_threshold_shutdown": "temperature_threshold_shutdown",
    "habanalabs_temperature_threshold_slowdown": "temperature_threshold_slowdown",
    "habanalabs_utilization": "utilization",
    "accelerator_gpu_utilization": "utilization",
}
PORT_FAMILY = "habanalabs_nic_port_status"
KUBE_INFO = "habanalabs_kube_info"
DEVICE_LABELS = (
    "Serial",
    "UUID",
    "device",
    "id",
    "fit",
    "spi",
    "driver",
    "pod_namespace",
    "pod_name",
)
PORTS = 24
EXTERNAL_PORTS = frozenset({21, 22, 23})


@dataclass
class Port:
    port: int
    port_type: str  # "internal" | "external"
    status: int = 1  # 1 up, 0 down


@dataclass
class Card:
    """One card as rhlml reports it (rhlml/src/lib.rs `Metrics`)."""

    index: int
    serial: str
    uuid: str
    values: dict[str, int]
    ports: list[Port]
    fit: str = ""
    spi: str = ""
    driver: str = ""

    @classmethod
    def from_rhlml(cls, device: Mapping[str, Any]) -> Card:
        """A card from one element of rhlml's JSON output."""
        return cls(
            int(device.get("device_id", 0)),
            str(device.get("serial", "")),
            str(device.get("uuid", "")),
            {f: int(device.get(f, 0)) for f in FIELDS},
            [Port(int(p["port"]), str(p["port_type"]), int(p["status"])) for p in device["ports"]],
        )


def healthy_card(node_index: int, index: int) -> Card:
    serial = f"AN{node_index:04d}{index:02d}"  # made up; sorts in card order
    values = dict.fromkeys(FIELDS, 0)
    values.update(
        power_default_limit=900_000,
        power_usage=180_000 + 1_000 * index,
        temperature_on_board=33,
        temperature_on_chip=40 + index,
        temperature_threshold_gpu=125,
        temperature_threshold_memory=95,
        temperature_threshold_shutdown=125,
        temperature_threshold_slowdown=115,
        pci_link_width=16,
        pci_link_speed=32,
        memory_total_bytes=128 * 2**30,
        memory_free_bytes=128 * 2**30,
        ecc_current_feature_mode=1,
        energy=1_000_000 + index,
        clock_current=1600,
        clock_max=1600,
    )
    ports = [Port(p, "external" if p in EXTERNAL_PORTS else "internal") for p in range(PORTS)]
    return Card(index, serial, f"01P0-HL3090A0-15-{serial}", values, ports)


# --- the text format, as client_golang writes it ------------------------------------------


def go_float(v: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), as expfmt writes sample values."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    sign, digits, exp = Decimal(repr(float(v))).normalize().as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    x = len(ds) + exp - 1  # the decimal exponent of the first digit
    s = "-" if sign else ""
    if x < -4 or x >= 6:  # shortest 'g' switches to %e from exponent 6 (strconv/ftoa.go)
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{s}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if exp >= 0:
        return s + ds + "0" * exp
    point = len(ds) + exp
    if point > 0:
        return s + ds[:point] + "." + ds[point:]
    return s + "0." + "0" * (-point) + ds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: Mapping[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} {go_float(value)}"


def render(
    cards: Iterable[Card],
    holders: Mapping[str, tuple[str, str]],
    hostname: str,
    in_kubernetes: bool = True,
) -> str:
    """The exporter's /metrics text for these cards; `holders` maps a serial to the
    (namespace, pod) holding it. Families sorted by name, series by their label values in
    label-name order, as client_golang's registry gathers them."""
    families: dict[str, list[tuple[tuple[int, tuple[str, ...]], str]]] = {}

    def add(name: str, labels: Mapping[str, str], value: float) -> None:
        # client_golang's MetricSorter: fewer labels first, then the values in name order.
        key = (len(labels), tuple(v for _, v in sorted(labels.items())))
        families.setdefault(name, []).append((key, _line(name, labels, value)))

    helps = {KUBE_INFO: "kubernetes info"}
    if in_kubernetes:
        kube = {"podName": "", "namespace": "", "podIP": "", "node": "", "hostname": hostname}
        add(KUBE_INFO, kube, 1)
    for card in cards:
        ns, pod = holders.get(card.serial, ("", ""))
        base = {
            "Serial": card.serial,
            "UUID": card.uuid,
            "device": card.serial,
            "id": str(card.index),
            "fit": card.fit,
            "spi": card.spi,
            "driver": card.driver,
            "pod_namespace": ns,
            "pod_name": pod,
        }
        for name, source in FAMILIES.items():
            value = source if isinstance(source, int) else card.values[source]
            add(name, base, value)
        for port in card.ports:
            add(
                PORT_FAMILY,
                {**base, "port": str(port.port), "port_type": port.port_type},
                port.status,
            )
    out = []
    for name in sorted(families):
        out.append(f"# HELP {name} {helps.get(name, '')}")
        out.append(f"# TYPE {name} gauge")
        out.extend(line for _, line in sorted(families[name], key=lambda kv: kv[0]))
    return "\n".join(out) + "\n"


# --- which pod holds which card ------------------------------------------------------------


def hpus_requested(pod: Mapping[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        want = (res.get("limits") or {}).get(GAUDI_RESOURCE) or (res.get("requests") or {}).get(
            GAUDI_RESOURCE
        )
        total += int(str(want)) if want else 0
    return total


def holds_devices(pod: Mapping[str, Any]) -> bool:
    """A pod the kubelet keeps devices for: bound, not finished (pod-resources lists it)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and hpus_requested(pod) > 0


class Allocator:
    """Which pod holds which card of one node, kept for each pod's life."""

    def __init__(self, serials: list[str]) -> None:
        self.serials = sorted(serials)
        self._by_uid: dict[str, tuple[str, str, list[str]]] = {}

    def sync(self, pods: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
        live = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            if holds_devices(pod) and meta.get("uid"):
                live[meta["uid"]] = pod
        for uid in list(self._by_uid):
            if uid not in live:
                del self._by_uid[uid]  # finished or gone: its cards are free again
        taken = {s for _, _, serials in self._by_uid.values() for s in serials}
        # Oldest first, as the kubelet admits them.
        for uid, pod in sorted(
            live.items(), key=lambda kv: kv[1]["metadata"].get("creationTimestamp") or ""
        ):
            if uid in self._by_uid:
                continue
            free = [s for s in self.serials if s not in taken]
            want = hpus_requested(pod)
            if want > len(free):
                continue  # the kubelet would refuse it (UnexpectedAdmissionError)
            got = free[:want]
            taken.update(got)
            meta = pod["metadata"]
            self._by_uid[uid] = (meta.get("namespace", ""), meta.get("name", ""), got)
        return {s: (ns, name) for ns, name, serials in self._by_uid.values() for s in serials}


# --- one node's exporter, and a fleet of them as Prometheus targets ---------------------------


@dataclass
class NodeExporter:
    """The exporter of one node: its cards, their faults, and an HTTP server."""

    node: str
    index: int
    cards: list[Card]
    min_scrape_interval: float = UPSTREAM_MIN_SCRAPE_INTERVAL
    rhlml_fails: bool = False  # Collect returns nothing
    pod_resources_down: bool = False  # only habanalabs_kube_info
    holders: dict[str, tuple[str, str]] = field(default_factory=dict)
    _last_scrape: float = -1e9
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def card(self, index: int) -> Card:
        return self.cards[index]

    def text(self) -> str:
        with self._lock:
            if self.rhlml_fails:
                return ""
            if self.pod_resources_down:
                return render([], {}, self.node)
            return render(self.cards, self.holders, self.node)

    def allow_scrape(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last_scrape < self.min_scrape_interval:
                return False
            self._last_scrape = now
            return True


PodSource = Callable[[], Iterable[Mapping[str, Any]]]


class GaudiExporterFleet:
    """One Intel-schema exporter per node, registered with the cluster's Prometheus as a
    file_sd target group labelled as a ServiceMonitor scrape of Intel's DaemonSet would be
    (the exporter's own `namespace` and `pod`: not the job's, which are `pod_namespace` and
    `pod_name` on each series).

    `pods()` lists the pods bound to nodes (dicts as the API server returns them); each
    scrape syncs a node's card holders from it, at most every `pod_refresh` seconds.
    """

    def __init__(
        self,
        targets_dir: Path,
        name: str,
        nodes: list[str],
        pods: PodSource,
        cards_per_node: int = 8,
        min_scrape_interval: float = UPSTREAM_MIN_SCRAPE_INTERVAL,
        pod_refresh: float = 0.5,
    ) -> None:
        self.name = name
        self.pods = pods
        self.pod_refresh = pod_refresh
        self._pods_at = -1e9
        self._pods: list[Mapping[str, Any]] = []
        self._pods_lock = threading.Lock()
        self.exporters: dict[str, NodeExporter] = {}
        self.allocators: dict[str, Allocator] = {}
        for i, node in enumerate(nodes):
            cards = [healthy_card(i, c) for c in range(cards_per_node)]
            ex = NodeExporter(node, i, cards, min_scrape_interval)
            self.exporters[node] = ex
            self.allocators[node] = Allocator([c.serial for c in cards])
            ex.server = self._serve(ex)
        self.target_file = targets_dir / f"{name}.json"
        targets_dir.mkdir(parents=True, exist_ok=True)
        groups = [
            {
                "targets": [f"127.0.0.1:{ex.server.server_address[1]}"],
                "labels": {
                    "namespace": "monitoring",
                    "service": "metric-exporter",
                    "endpoint": "habana-metrics",
                    "container": "metric-exporter",
                    "pod": f"metric-exporter-ds-{ex.index:05d}",
                    "fixture": name,
                },
            }
            for ex in self.exporters.values()
            if ex.server is not None
        ]
        tmp = self.target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.rename(self.target_file)  # atomic: Prometheus never reads half a file

    # -- faults -----------------------------------------------------------------------------

    def card(self, node: str, index: int) -> Card:
        return self.exporters[node].card(index)

    def held_by(self, namespace: str, pod: str) -> list[tuple[str, Card]]:
        """(node, card) of every card the pod holds, as the exporter last saw it."""
        out = []
        for node, ex in self.exporters.items():
            self._sync(ex)
            out += [(node, c) for c in ex.cards if ex.holders.get(c.serial) == (namespace, pod)]
        return out

    def ecc(self, node: str, index: int, rows: int = 2) -> None:
        """Rows with double-bit ECC errors pending replacement (hl-smi's row replacement)."""
        with self.exporters[node]._lock:
            v = self.card(node, index).values
            v["pending_rows_double_bit_ecc_errors"] = rows
            v["pending_rows_state"] = 1

    def overheat(self, node: str, index: int) -> None:
        """The on-chip temperature at the card's shutdown threshold."""
        with self.exporters[node]._lock:
            v = self.card(node, index).values
            v["temperature_on_chip"] = v["temperature_threshold_shutdown"] or 125

    def link_down(self, node: str, index: int, port: int | None = None) -> None:
        """A scale-out port loses its link (the first external one by default)."""
        with self.exporters[node]._lock:
            card = self.card(node, index)
            want = port if port is not None else min(EXTERNAL_PORTS)
            for p in card.ports:
                if p.port == want:
                    p.status = 0

    def zeros(self, node: str, index: int, fields: Iterable[str] | None = None) -> None:
        """The card reads 0 where rhlml failed: every field and every port's link state
        (None), or only the named fields ("ports" for the link states)."""
        names = set(FIELDS) | {"ports"} if fields is None else set(fields)
        with self.exporters[node]._lock:
            card = self.card(node, index)
            for f in names - {"ports"}:
                card.values[f] = 0
            if "ports" in names:
                for p in card.ports:
                    p.status = 0

    def heal(self) -> None:
        """Every card healthy again, every exporter answering."""
        for ex in self.exporters.values():
            with ex._lock:
                ex.cards = [healthy_card(ex.index, c.index) for c in ex.cards]
                ex.rhlml_fails = ex.pod_resources_down = False

    def close(self) -> None:
        self.target_file.unlink(missing_ok=True)
        for ex in self.exporters.values():
            if ex.server is not None:
                ex.server.shutdown()
                ex.server.server_close()

    # -- serving ----------------------------------------------------------------------------

    def _sync(self, ex: NodeExporter) -> None:
        with self._pods_lock:
            if time.monotonic() - self._pods_at >= self.pod_refresh:
                self._pods = list(self.pods())
                self._pods_at = time.monotonic()
            pods = self._pods
        mine = [p for p in pods if (p.get("spec") or {}).get("nodeName") == ex.node]
        with ex._lock:  # a scrape and a test may sync the same node at once
            ex.holders = self.allocators[ex.node].sync(mine)

    def scrape(self, node: str) -> str:
        ex = self.exporters[node]
        self._sync(ex)
        return ex.text()

    def _serve(self, ex: NodeExporter) -> ThreadingHTTPServer:
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                if not ex.allow_scrape():
                    body, status, ctype = (
                        b"rate limiting exceeded\n",
                        429,
                        "text/plain; charset=utf-8",
                    )
                else:
                    body, status, ctype = fleet.scrape(ex.node).encode(), 200, CONTENT_TYPE
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=server.serve_forever, name=f"gaudi-exporter-{ex.node}", daemon=True
        ).start()
        return server


def api_pod_source(cluster: Any) -> PodSource:
    """Pods bound to a node, listed from the local cluster's API server (what the kubelet's
    pod-resources API would know on each node)."""
    import httpx

    client = httpx.Client(base_url=cluster.apiserver_url, verify=cluster._ssl(), timeout=5)

    def pods() -> Iterator[Mapping[str, Any]]:
        r = client.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName!="})
        r.raise_for_status()
        yield from r.json().get("items") or []

    return pods

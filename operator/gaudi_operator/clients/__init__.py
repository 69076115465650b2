"""Clients of the outside world, created once at start-up: Kubernetes (`kube`, asyncio)
and Prometheus's HTTP API (`prometheus`)."""

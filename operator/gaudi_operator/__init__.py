"""Gaudi Scale Starter: a kopf operator for distributed PyTorch training on Intel Gaudi 3."""

from gaudi_operator import lazy_client

# Before kopf or any module of ours imports kubernetes_asyncio (lazy_client.py says why).
lazy_client.install()

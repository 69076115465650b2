"""Gaudi Scale Starter: a kopf operator for distributed PyTorch training on Intel Gaudi 3."""

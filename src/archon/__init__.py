"""Archon: a self-hosted LLM platform for teams that run their own GPUs in Kubernetes."""

__version__ = "0.1.0"

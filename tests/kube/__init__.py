"""Helpers that run a real Kubernetes control plane for the tests."""

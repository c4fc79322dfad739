"""Datasets: simulators, readers, manifests and splits."""

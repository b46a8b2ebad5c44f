"""Readers, dataset formats, manifests, caches and samplers."""

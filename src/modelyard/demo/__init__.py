"""The bundled demo repository: small real models, built once into a cache folder."""

from modelyard.demo.build import build_demo_repository, default_cache_dir, demo_examples

__all__ = ["build_demo_repository", "default_cache_dir", "demo_examples"]

"""Lifecycle: model version states, the registry of what is loaded, and the controller."""

"""Support for modelyard's tests and for users testing their own deployments."""

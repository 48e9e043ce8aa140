"""Paging: serve more model versions than the devices hold (docs/paging.md).

``eviction`` (pure: which versions leave a device), ``store`` (the host-memory tier: version
folders copied into shared memory owned by the front end), ``pager`` (tiers, page-in and
page-out, single-flight, waits bounded by ``max_wait_ms``) and ``loader`` (the controller's
``Loader`` with paging, and the servable that pages its version in on demand).
"""

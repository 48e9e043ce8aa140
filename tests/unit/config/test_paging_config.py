"""The ``paging:`` block and ``resident:``: off by default, errors that name key, line and fix."""

from __future__ import annotations

import pytest

from modelyard.config import parse_config
from modelyard.errors import ConfigError

MODELS = """
models:
  - name: ranker
    base_path: /models/ranker
    resident: true
  - name: cold
    base_path: /models/cold
"""


def test_paging_is_off_without_the_block() -> None:
    config = parse_config("models:\n  - {name: a, base_path: /m/a}\n")
    assert config.paging is None
    assert config.models[0].resident is False


def test_paging_block_with_sizes_and_resident_models() -> None:
    config = parse_config("paging:\n  host_memory: 48GiB\n  max_wait_ms: 5000\n" + MODELS)
    assert config.paging is not None
    assert config.paging.host_memory_bytes == 48 * 2**30
    assert config.paging.max_wait_ms == 5000
    assert [m.resident for m in config.models] == [True, False]


def test_paging_defaults() -> None:
    config = parse_config("paging: {}\n" + MODELS)
    assert config.paging is not None
    assert config.paging.host_memory_bytes == 0
    assert config.paging.max_wait_ms == 30000


def test_unknown_paging_key_names_it_the_line_and_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("paging:\n  host_memory: 1GiB\n  max_wait: 10\n" + MODELS, source="c.yaml")
    message = err.value.message
    assert "c.yaml:3: unknown key 'max_wait' at paging.max_wait" in message
    assert "allowed keys: host_memory, max_wait_ms" in message


def test_bad_size_names_the_key_and_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("paging:\n  host_memory: lots\n" + MODELS, source="c.yaml")
    assert "c.yaml:2: paging.host_memory" in err.value.message


def test_max_wait_must_be_positive() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("paging: {max_wait_ms: 0}\n" + MODELS, source="c.yaml")
    assert "paging.max_wait_ms" in err.value.message


def test_resident_without_paging_is_refused_with_the_line_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(MODELS, source="c.yaml")
    message = err.value.message
    assert "c.yaml:5: models.0.resident" in message
    assert "add a top-level paging: block" in message
    assert "'ranker'" in message

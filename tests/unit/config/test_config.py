from pathlib import Path

import pytest

from modelyard.config import Platform, load_config, parse_config, parse_size
from modelyard.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("512MiB", 512 * 2**20),
        ("15GB", 15 * 10**9),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("1048576", 1048576),
        (2048, 2048),
    ],
)
def test_sizes_users_write(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4 parsecs", "-1GiB", "GiB", ""])
def test_bad_size_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 4GiB"):
        parse_size(text)


FULL = """
devices:
  - {name: sim0, kind: cpu, memory: 512MiB}
  - {name: sim1, kind: cpu, memory: 1GiB}
models:
  - name: resnet
    base_path: ./models/resnet
    platform: onnx
    version_policy: {latest: 2}
    version_labels: {stable: 1}
    devices: [sim1]
    replicas: 1
    memory: 4GiB
    batching: {max_batch_size: 32, batch_timeout_micros: 1000}
"""


def test_design_keys_parse_and_base_path_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "modelyard.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert isinstance(config.devices, tuple)
    assert [d.memory_bytes for d in config.devices] == [512 * 2**20, 2**30]
    model = config.models[0]
    assert model.base_path == tmp_path / "models" / "resnet"
    assert model.platform is Platform.ONNX
    assert model.version_policy.latest == 2
    assert model.memory_bytes == 4 * 2**30
    assert model.batching is not None
    assert model.batching.max_batch_size == 32


def test_unknown_key_is_named_with_its_line() -> None:
    text = "models:\n  - name: a\n    base_path: /x\n    replica: 2\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="m.yaml")
    message = info.value.message
    assert "m.yaml:4" in message
    assert "unknown key 'replica'" in message
    assert "replicas" in message  # the allowed keys are listed, so the typo is obvious


@pytest.mark.parametrize("memory", ["[]", "{a: 1}", "[4GiB]"])
def test_a_size_that_is_a_list_or_an_object_is_a_config_error(memory: str) -> None:
    """Was a TypeError out of load_config (and a 500 from a management load)."""
    text = f"models:\n  - name: a\n    base_path: /x\n    memory: {memory}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="m.yaml")
    assert "m.yaml:4" in info.value.message
    assert "is not a size" in info.value.message


def test_unknown_nested_key_lists_that_sections_keys() -> None:
    text = "models:\n  - name: a\n    base_path: /x\n    batching: {max_batch: 8}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="m.yaml")
    assert "unknown key 'max_batch'" in info.value.message
    assert "max_batch_size" in info.value.message


def test_pin_to_undeclared_device_names_both() -> None:
    text = (
        "devices: [{name: gpu0, kind: cuda, index: 0}]\n"
        "models: [{name: a, base_path: /x, devices: [gpu7]}]\n"
    )
    with pytest.raises(ConfigError, match=r"pins device 'gpu7'.*declared devices: gpu0"):
        parse_config(text)


def test_replicas_need_enough_pinned_devices() -> None:
    text = "models: [{name: a, base_path: /x, devices: [d0], replicas: 2}]\n"
    with pytest.raises(ConfigError, match="replicas: 2 but pins only 1 device"):
        parse_config(text)


def test_version_policy_takes_exactly_one_key() -> None:
    text = "models: [{name: a, base_path: /x, version_policy: {latest: 1, all: true}}]\n"
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config(text)
    default = parse_config("models: [{name: a, base_path: /x}]\n")
    assert default.models[0].version_policy.latest == 1


def test_duplicate_model_names_rejected() -> None:
    text = "models: [{name: a, base_path: /x}, {name: a, base_path: /y}]\n"
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config(text)


def test_config_is_frozen() -> None:
    config = parse_config("models: [{name: a, base_path: /x}]\n")
    with pytest.raises(ValueError, match="frozen"):
        config.models[0].replicas = 3  # type: ignore[misc]


def test_tf_serving_config_is_recognised() -> None:
    config = parse_config('model_config_list {\n  config { name: "a" base_path: "/x" }\n}\n')
    assert [(m.name, m.base_path) for m in config.models] == [("a", Path("/x"))]

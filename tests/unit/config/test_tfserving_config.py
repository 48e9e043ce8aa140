"""TF Serving's models.config and batching parameters, read into modelyard's config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelyard.config import BatchingConfig, Platform, load_config, parse_config
from modelyard.config.tfserving import (
    parse_batching_parameters,
    parse_tf_serving_config,
    with_batching,
)
from modelyard.errors import ConfigError
from modelyard.tfproto.generated import tensorflow_serving_config_pb2 as pb

MODELS_CONFIG = """\
# Two models, as TF Serving's docs write them.
model_config_list {
  config {
    name: 'resnet'
    base_path: '/models/resnet'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config {
    name: "bert"
    base_path: "bert"
    model_platform: "tensorflow"
    model_version_policy: { latest: { num_versions: 2 } }
  }
  config { name: "all" base_path: "/m/all" model_version_policy { all {} } }
  config { name: "plain" base_path: "/m/plain" }
}
"""


def test_every_field_and_version_policy() -> None:
    config = parse_config(MODELS_CONFIG, source="models.config", base_dir=Path("/srv"))
    by_name = {m.name: m for m in config.models}
    resnet = by_name["resnet"]
    assert resnet.base_path == Path("/models/resnet")
    assert resnet.platform is Platform.TENSORFLOW
    assert resnet.version_policy.specific == (1, 2)
    assert resnet.version_labels == {"stable": 1, "canary": 2}
    bert = by_name["bert"]
    assert bert.base_path == Path("/srv/bert")  # relative to the file's folder
    assert bert.version_policy.latest == 2
    assert by_name["all"].version_policy.all is True
    assert by_name["all"].platform is Platform.AUTO  # no model_platform: detect by file
    assert by_name["plain"].version_policy.latest == 1  # TF Serving's default policy


def test_latest_zero_means_one_as_in_tf_serving() -> None:
    text = "model_config_list { config { name: 'a' base_path: '/a' "
    text += "model_version_policy { latest { } } } }"
    assert parse_config(text).models[0].version_policy.latest == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model_config_list {\n  config {\n    nme: 'a'\n  }\n}\n", r"models\.config:3:5: .*nme"),
        ("model_config_list {\n  config { name: 'a' base_path: 3 }\n}\n", r"models\.config:2:"),
        ("model_config_list {\n  config { name: 'a'\n", r"models\.config:\d+:\d+: "),
        ("model_config_list { config { base_path: '/a' } }", r"config\[0\] has no name"),
        ("model_config_list { config { name: 'a' } }", r"model 'a' has no base_path"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_platform: 'caffe' } }",
            r"model_platform 'caffe'; expected one of",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' "
            "model_version_policy { specific { } } } }",
            r"specific lists no versions",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' "
            "model_version_policy { latest { num_versions: 1 } all { } } } }",
            r"models\.config:1:",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' } "
            "config { name: 'a' base_path: '/b' } }",
            r"repeated: a",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/a' "
            "version_labels { key: '1x' value: 1 } } }",
            r"must be a name",
        ),
        ("model_config_list { config { name: 'a' base_path: '/a' logging_config { } } }", "1:"),
    ],
)
def test_errors_name_the_line_or_model(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config(text, source="models.config")


def test_custom_model_config_is_refused() -> None:
    message = pb.ModelServerConfig()
    message.custom_model_config.type_url = "type.googleapis.com/x.Y"
    from google.protobuf import text_format

    text = text_format.MessageToString(message)
    with pytest.raises(ConfigError, match="custom_model_config is not supported"):
        parse_tf_serving_config(text)


def test_overlay_adds_modelyard_settings(tmp_path: Path) -> None:
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "devices:\n"
        "  - {name: gpu0, kind: cuda, index: 0, memory: 15GiB}\n"
        "  - {name: gpu1, kind: cuda, index: 1, memory: 15GiB}\n"
        "models:\n"
        "  resnet: {devices: [gpu1], memory: 4GiB, batching: {max_batch_size: 8}}\n"
        "  bert: {replicas: 2}\n"
    )
    config = load_config(config_file, overlay=overlay)
    by_name = {m.name: m for m in config.models}
    assert by_name["resnet"].devices == ("gpu1",)
    assert by_name["resnet"].memory_bytes == 4 << 30
    assert by_name["resnet"].batching == BatchingConfig(max_batch_size=8)
    assert by_name["resnet"].version_labels == {"stable": 1, "canary": 2}  # still the file's
    assert by_name["bert"].replicas == 2
    assert isinstance(config.devices, tuple)
    assert [d.name for d in config.devices] == ["gpu0", "gpu1"]


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("models:\n  nope: {replicas: 2}\n", r"model 'nope' is not in the models\.config"),
        ("models:\n  resnet: {base_path: /x}\n", r"unknown key\(s\) base_path"),
        ("modls: {}\n", r"unknown key\(s\) modls"),
        ("models:\n  resnet: {replicas: 0}\n", r"models\.0\.replicas"),
        (
            "devices: [{name: gpu0, kind: cuda}]\nmodels:\n  resnet: {devices: [gpu9]}\n",
            r"pins device 'gpu9'",
        ),
        ("- a\n", r"must be a mapping"),
    ],
)
def test_overlay_errors(tmp_path: Path, overlay: str, expected: str) -> None:
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG)
    overlay_file = tmp_path / "overlay.yaml"
    overlay_file.write_text(overlay)
    with pytest.raises(ConfigError, match=expected):
        load_config(config_file, overlay=overlay_file)


def test_overlay_is_for_models_config_only(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("models: []\n")
    overlay = tmp_path / "o.yaml"
    overlay.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"applies to a TF Serving models\.config"):
        load_config(config_file, overlay=overlay)


def test_batching_parameters(caplog: pytest.LogCaptureFixture) -> None:
    text = """
        max_batch_size { value: 16 }
        batch_timeout_micros { value: 500 }
        max_enqueued_batches { value: 7 }
        num_batch_threads { value: 4 }
        allowed_batch_sizes: 4
        allowed_batch_sizes: 16
        pad_variable_length_inputs: true
    """
    with caplog.at_level(logging.WARNING):
        batching = parse_batching_parameters(text, source="batching.config")
    assert batching == BatchingConfig(
        max_batch_size=16,
        batch_timeout_micros=500,
        max_enqueued_batches=7,
        allowed_batch_sizes=(4, 16),
    )
    assert "num_batch_threads, pad_variable_length_inputs have no effect" in caplog.text
    assert parse_batching_parameters("") == BatchingConfig()


def test_batching_parameters_field_numbers_are_tf_servings() -> None:
    """session_bundle_config.proto's numbers (not in tensorflow-serving-api to compare with)."""
    fields = {f.name: f.number for f in pb.BatchingParameters.DESCRIPTOR.fields}
    assert fields == {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
        "thread_pool_name": 5,
        "allowed_batch_sizes": 6,
        "pad_variable_length_inputs": 7,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_batch_size: 3", r"batching\.config:1:"),
        ("max_batch_size { value: 0 }", "greater than or equal to 1"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
    ],
)
def test_batching_parameter_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_batching_parameters(text, source="batching.config")


def test_with_batching_keeps_a_models_own() -> None:
    config = parse_config(MODELS_CONFIG)
    own = BatchingConfig(max_batch_size=2)
    config = config.model_copy(
        update={"models": (config.models[0].model_copy(update={"batching": own}),)}
    )
    shared = BatchingConfig(max_batch_size=64)
    result = with_batching(config, shared)
    assert result.models[0].batching == own
    config2 = with_batching(parse_config(MODELS_CONFIG), shared)
    assert all(m.batching == shared for m in config2.models)

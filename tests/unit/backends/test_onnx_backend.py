from __future__ import annotations

import gc
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelyard.backends import LoadedModel, get_backend
from modelyard.backends.onnx import OnnxBackend, OnnxModel
from modelyard.config.schema import Platform
from modelyard.errors import FailedPrecondition, InvalidArgument, Unavailable
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing.models import BuiltModel, truncate, write_corrupt

ort = pytest.importorskip("onnxruntime")
HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()


def load(model: BuiltModel, declared: Signature | None = None, device: str = "cpu") -> OnnxModel:
    loaded = OnnxBackend().load(model.version_dir, device, declared)
    assert isinstance(loaded, OnnxModel)
    return loaded


def assert_matches(loaded: LoadedModel, model: BuiltModel, inputs: dict[str, np.ndarray]) -> None:
    got = loaded.predict(inputs)
    want = model.reference(inputs)
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_registry_returns_the_onnx_backend() -> None:
    backend = get_backend(Platform.ONNX)
    assert isinstance(backend, OnnxBackend)
    assert backend.artifact == "model.onnx"


def test_signature_comes_from_the_artifact(onnx_linear: BuiltModel) -> None:
    loaded = load(onnx_linear)
    assert isinstance(loaded, LoadedModel)
    assert loaded.signature == Signature(
        (TensorSpec("x", DataType.FP32, (-1, 4)),),
        (TensorSpec("y", DataType.FP32, (-1, 2)),),
    )


@pytest.mark.parametrize("batch", [1, 2, 17])
def test_predict_matches_the_numpy_reference(onnx_linear_relu: BuiltModel, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 5)).astype(np.float32)
    assert_matches(load(onnx_linear_relu), onnx_linear_relu, {"x": x})


def test_multiple_inputs_and_outputs(onnx_sum_product: BuiltModel) -> None:
    loaded = load(onnx_sum_product)
    assert [s.name for s in loaded.signature.inputs] == ["a", "b"]
    assert [s.name for s in loaded.signature.outputs] == ["sum", "product"]
    assert_matches(loaded, onnx_sum_product, onnx_sum_product.example)


def test_int64_model_keeps_its_dtype_and_exact_values(onnx_int64: BuiltModel) -> None:
    loaded = load(onnx_int64)
    assert loaded.signature == onnx_int64.signature
    x = np.array([[2**40, -7]], dtype=np.int64)
    out = loaded.predict({"x": x})["y"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x * 3 - 2)


def test_non_contiguous_input(onnx_linear: BuiltModel) -> None:
    x = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]
    assert not x.flags.c_contiguous
    assert_matches(load(onnx_linear), onnx_linear, {"x": x})


def test_random_bytes_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    path = write_corrupt(tmp_path / "1", "model.onnx")
    with pytest.raises(InvalidArgument, match="cannot be loaded by onnxruntime") as info:
        OnnxBackend().load(tmp_path / "1", "cpu", None)
    assert str(path) in info.value.message


def test_truncated_file_is_rejected(onnx_linear_relu: BuiltModel, tmp_path: Path) -> None:
    shutil.copy(onnx_linear_relu.artifact, tmp_path / "model.onnx")
    truncate(tmp_path / "model.onnx", 0.6)
    with pytest.raises(InvalidArgument, match=r"model\.onnx cannot be loaded"):
        OnnxBackend().load(tmp_path, "cpu", None)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        OnnxBackend().load(tmp_path, "cpu", None)


def test_declared_signature_renames_positionally(onnx_sum_product: BuiltModel) -> None:
    spec = (-1, 3)
    declared = Signature(
        (TensorSpec("left", DataType.FP32, spec), TensorSpec("right", DataType.FP32, spec)),
        (TensorSpec("added", DataType.FP32, spec), TensorSpec("multiplied", DataType.FP32, spec)),
    )
    loaded = load(onnx_sum_product, declared)
    assert loaded.signature == declared
    a, b = onnx_sum_product.example["a"], onnx_sum_product.example["b"]
    out = loaded.predict({"left": a, "right": b})
    np.testing.assert_allclose(out["added"], a + b, rtol=1e-6)
    np.testing.assert_allclose(out["multiplied"], a * b, rtol=1e-6)


def test_declared_signature_may_fix_a_dynamic_dimension(onnx_linear: BuiltModel) -> None:
    declared = Signature(
        (TensorSpec("x", DataType.FP32, (8, -1)),),
        (TensorSpec("y", DataType.FP32, (-1, 2)),),
    )
    assert load(onnx_linear, declared).signature.inputs == (TensorSpec("x", DataType.FP32, (8, 4)),)


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([("x", DataType.FP64, (-1, 4))], [("y", DataType.FP32, (-1, 2))], "x: FP64"),
        ([("x", DataType.FP32, (-1, 5))], [("y", DataType.FP32, (-1, 2))], r"x: FP32 \[\?, 5\]"),
        ([("x", DataType.FP32, (-1, 4, 1))], [("y", DataType.FP32, (-1, 2))], "input 0"),
        (
            [("x", DataType.FP32, (-1, 4)), ("z", DataType.FP32, (-1, 4))],
            [("y", DataType.FP32, (-1, 2))],
            "declares 2 input",
        ),
    ],
)
def test_declared_signature_that_disagrees_is_rejected(
    onnx_linear: BuiltModel,
    inputs: list[tuple[str, DataType, tuple[int, ...]]],
    outputs: list[tuple[str, DataType, tuple[int, ...]]],
    message: str,
) -> None:
    declared = Signature(
        tuple(TensorSpec(*i) for i in inputs), tuple(TensorSpec(*o) for o in outputs)
    )
    with pytest.raises(InvalidArgument, match=message) as info:
        load(onnx_linear, declared)
    # The message shows what the model really has, so the config can be fixed from it.
    assert "x: FP32 [?, 4]" in info.value.message
    assert str(onnx_linear.artifact) in info.value.message


def test_string_tensors_are_rejected_at_load(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [-1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [-1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(InvalidArgument, match="string tensor"):
        OnnxBackend().load(tmp_path, "cpu", None)


def test_thread_count_from_the_environment(
    onnx_linear: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_INTRA_OP_THREADS", "1")
    assert_matches(load(onnx_linear), onnx_linear, onnx_linear.example)
    monkeypatch.setenv("MODELYARD_INTRA_OP_THREADS", "many")
    with pytest.raises(InvalidArgument, match="MODELYARD_INTRA_OP_THREADS"):
        load(onnx_linear)


def test_a_model_with_a_short_call_runs_on_one_thread(onnx_linear_relu: BuiltModel) -> None:
    # A pool's threads would spin after every call of a model that takes microseconds: the
    # process gains no thread for such a model, and its answers are the same.
    import psutil

    process = psutil.Process()
    load(onnx_linear_relu).predict(onnx_linear_relu.example)  # onnxruntime's own threads
    # That model's session may be held by a reference cycle: freed now, not by a collection
    # that happens to run during the load below (its pool's threads would end there).
    gc.collect()
    before = process.num_threads()
    loaded = load(onnx_linear_relu)
    assert loaded._session.get_session_options().intra_op_num_threads == 1
    assert process.num_threads() == before
    assert_matches(loaded, onnx_linear_relu, onnx_linear_relu.example)


def test_a_model_with_a_dynamic_inner_dimension_keeps_the_pool(tmp_path: Path) -> None:
    # One step of a sequence says nothing of a real request's cost: ONNX Runtime's pool stays.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, -1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "model.onnx"))
    loaded = OnnxBackend().load(tmp_path, "cpu", None)
    assert isinstance(loaded, OnnxModel)
    assert loaded._session.get_session_options().intra_op_num_threads == 0


def test_the_environment_overrides_the_thread_choice(
    onnx_linear_relu: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_INTRA_OP_THREADS", "2")
    loaded = load(onnx_linear_relu)
    assert loaded._session.get_session_options().intra_op_num_threads == 2


def test_concurrent_predicts_are_each_correct(onnx_linear_relu: BuiltModel) -> None:
    loaded = load(onnx_linear_relu)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((i % 5 + 1, 5)).astype(np.float32) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: loaded.predict({"x": x})["y"], batches))
    for x, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, onnx_linear_relu.reference({"x": x})["y"], rtol=1e-5)


def test_unload_releases_the_session(onnx_linear: BuiltModel) -> None:
    loaded = load(onnx_linear)
    loaded.unload()
    assert loaded.providers == []
    with pytest.raises(Unavailable):
        loaded.predict(onnx_linear.example)


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="this onnxruntime has CUDA support")
def test_cuda_device_without_cuda_support_fails_clearly(onnx_linear: BuiltModel) -> None:
    with pytest.raises(FailedPrecondition, match="onnxruntime-gpu"):
        load(onnx_linear, device="cuda:0")


def test_unknown_device_is_rejected(onnx_linear: BuiltModel) -> None:
    with pytest.raises(InvalidArgument, match="unknown device"):
        load(onnx_linear, device="tpu:0")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="needs onnxruntime with CUDAExecutionProvider")
def test_loads_and_predicts_on_cuda(onnx_linear_relu: BuiltModel) -> None:
    loaded = load(onnx_linear_relu, device="cuda:0")
    # The session runs on the GPU (no silent CPU fallback), so its weights live there.
    assert loaded.providers[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(3).standard_normal((9, 5)).astype(np.float32)
    assert_matches(loaded, onnx_linear_relu, {"x": x})
    loaded.unload()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="needs onnxruntime with CUDAExecutionProvider")
def test_a_gpu_slice_caps_the_session_arena_at_its_memory(onnx_linear_relu: BuiltModel) -> None:
    cap = 256 * 1024 * 1024
    capped = OnnxBackend().load(onnx_linear_relu.version_dir, "cuda:0", None, memory_cap_bytes=cap)
    whole = load(onnx_linear_relu, device="cuda:0")
    assert isinstance(capped, OnnxModel)
    assert capped.provider_options["CUDAExecutionProvider"]["gpu_mem_limit"] == str(cap)
    assert whole.provider_options["CUDAExecutionProvider"]["gpu_mem_limit"] != str(cap)
    capped.unload()
    whole.unload()


def test_an_onnxruntime_whose_inner_run_takes_other_arguments_still_serves(
    onnx_linear_relu: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU path calls onnxruntime's inner session directly; a release whose inner ``run``
    takes other arguments must keep answering correctly (through the wrapper's ``run``), not
    refuse every request as a bad input."""

    class OtherRelease:
        """An inner session of a release whose ``run`` has another signature."""

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            raise TypeError("run(): incompatible function arguments")

    import onnxruntime

    real_init = onnxruntime.InferenceSession.__init__

    def init(self: onnxruntime.InferenceSession, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        self.real_inner = self._sess  # the wrapper's own run goes through it
        self._sess = OtherRelease()

    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", init)
    monkeypatch.setattr(
        onnxruntime.InferenceSession,
        "run",
        lambda self, names, feed, options=None: self.real_inner.run(names, feed, options),
    )
    loaded = load(onnx_linear_relu)
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    for _ in range(2):  # the first call finds out, the second goes straight to the wrapper
        assert_matches(loaded, onnx_linear_relu, {"x": x})

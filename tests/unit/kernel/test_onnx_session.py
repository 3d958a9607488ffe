"""Provider choice of `kernel.onnx_session`, with a real ONNX Runtime session on a tiny graph."""

import logging

import onnxruntime as ort
import pytest

from kernel import onnx_session
from kernel.onnx_session import chosen_providers, open_session


def test_unavailable_providers_are_skipped_in_the_requested_order():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], available) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert chosen_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert chosen_providers([], available) == ["CPUExecutionProvider"]


def test_a_provider_this_machine_lacks_is_not_asked_for(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="kernel.onnx_session")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = open_session(identity_model, providers)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_gpu_provider_that_does_not_start_is_a_warning(identity_model, caplog, monkeypatch):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    # ONNX Runtime itself falls back to the CPU when the CUDA provider cannot start (missing
    # libraries); pretending the build has it makes this CPU-only build do exactly that.
    monkeypatch.setattr(
        onnx_session.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    caplog.set_level(logging.INFO, logger="kernel.onnx_session")
    with pytest.warns(UserWarning, match="not in available provider names"):  # ONNX Runtime's own
        session = open_session(identity_model, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "ONNX session identity.onnx asked for ['CUDAExecutionProvider', 'CPUExecutionProvider']"
        " but runs on ['CPUExecutionProvider']"
    ]

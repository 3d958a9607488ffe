"""The risk-model slot with a real ONNX Runtime session on a small logistic model built here."""

import json
import math
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inference.cds.errors import RuleConfigError
from inference.cds.risk import features, parse_contract
from inference.cds.risk_session import OnnxRiskModel
from inference.cds.rules import process, ruleset_from
from inference.cds.state import PatientState
from kernel.settings import CdsSettings
from tests.unit.inference.cds.fixtures import T0, hours, obs, record

WEIGHTS = [0.05, 0.8, 0.02]  # heart rate (/min), lactate (mmol/L), age (years)
BIAS = -10.0
CONTRACT = {
    "id": "deterioration",
    "version": "0.3.0",
    "title": "Deterioration risk (24 h)",
    "model": "deterioration.onnx",
    "input": "features",
    "output": "probability",
    "output_index": 1,
    "citation": "Test model built in tests/unit/test_risk_model.py",
    "features": [
        {"name": "hr", "analyte": "heart_rate", "window_h": 12},
        {"name": "lactate", "analyte": "lactate", "window_h": 24, "default": 1.0},
        {"name": "age", "source": "age_years"},
    ],
    "thresholds": [{"at": 0.3, "severity": "warning"}, {"at": 0.6, "severity": "critical"}],
}


def _logistic(weights, bias, *, sigmoid=True, width=None):
    """[N, width] → [N, 2] (1 - p, p) with p = sigmoid(x·w + b)."""
    width = width or len(weights)
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid" if sigmoid else "Identity", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probability"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 2])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [width, 1], weights),
            helper.make_tensor("b", TensorProto.FLOAT, [1], [bias]),
            helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _install(tmp_path, contract=CONTRACT, model=None):
    onnx.save(model or _logistic(WEIGHTS, BIAS), tmp_path / "deterioration.onnx")
    path = tmp_path / "deterioration.json"
    path.write_text(json.dumps(contract))
    return path


def _expected(hr, lactate, age):
    z = np.dot(WEIGHTS, [hr, lactate, age]) + BIAS
    return 1 / (1 + math.exp(-z))


def test_onnx_runtime_scores_what_the_weights_say(tmp_path):
    model = OnnxRiskModel(_install(tmp_path), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert model.providers[-1] == "CPUExecutionProvider"
    for row in ([80, 1.0, 40], [130, 4.2, 77], [150, 8.0, 90]):
        assert model.score(row) == pytest.approx(_expected(*row), abs=1e-6)


def _patient():
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1948-03-06", "gender": "female"}
    return process(None, record(patient), ruleset_from(CdsSettings()), now=T0).state


def test_runs_on_each_state_change_and_escalates_by_threshold(tmp_path):
    rules = replace(
        ruleset_from(CdsSettings()),
        risk_models=(OnnxRiskModel(_install(tmp_path), ["CPUExecutionProvider"]),),
    )
    state, raised = _patient(), []
    for n, (hr, lactate) in enumerate([(80, None), (118, None), (118, 3.0), (150, 3.0)]):
        at = T0 + hours(n + 1)
        resources = [obs("8867-4", hr, at=at, oid=f"hr{n}")]
        if lactate is not None:
            resources.append(obs("2524-7", lactate, "mmol/L", at=at, oid=f"lac{n}"))
        outcome = process(state, record(*resources, message_id=str(n), at=at), rules, now=at)
        state = outcome.state
        raised.append([(a.severity, a.summary) for a in outcome.alerts if a.rule_id == "risk-deterioration"])
    # age 77: p = sigmoid(0.05 hr + 0.8 lactate + 1.54 - 10); lactate defaults to 1.0 until measured
    expected = [
        _expected(80, 1.0, 77),
        _expected(118, 1.0, 77),
        _expected(118, 3.0, 77),
        _expected(150, 3.0, 77),
    ]
    assert [round(p, 2) for p in expected] == [0.03, 0.15, 0.46, 0.81]
    assert raised == [
        [],
        [],
        [("warning", "Deterioration risk (24 h): 46%")],
        [("critical", "Deterioration risk (24 h): 81%")],
    ]
    alert = state.alerts["risk-deterioration"]
    assert [i.label for i in alert.inputs] == ["Heart rate", "Lactate", "Age"]
    assert alert.citation == CONTRACT["citation"]
    assert alert.rule_version == "0.3.0"


def test_a_missing_feature_without_default_does_not_run_the_model(tmp_path):
    contract = parse_contract(json.dumps(CONTRACT))
    no_birth = PatientState(patient_id="p1")
    state = process(no_birth, record(obs("8867-4", 150, at=T0)), ruleset_from(CdsSettings()), now=T0).state
    assert features(state, contract, T0) is None  # age unknown and no default
    vector, inputs = features(_with_hr(150), contract, T0)
    assert vector == [150.0, 1.0, 77.0]
    assert inputs[1].value == "1 (default)"


def _with_hr(hr):
    return process(_patient(), record(obs("8867-4", hr, at=T0)), ruleset_from(CdsSettings()), now=T0).state


def test_records_that_change_none_of_its_analytes_do_not_run_it(tmp_path):
    calls = []

    class Spy:
        contract = parse_contract(json.dumps(CONTRACT))

        def score(self, vector):
            calls.append(vector)
            return 0.9

    rules = replace(ruleset_from(CdsSettings()), risk_models=(Spy(),))
    state = _with_hr(150)
    process(state, record(obs("2823-3", 4.0, "mmol/L", at=T0)), rules, now=T0)  # potassium: not an input
    assert calls == []
    process(state, record(obs("2524-7", 2.0, "mmol/L", at=T0)), rules, now=T0)
    assert calls == [[150.0, 2.0, 77.0]]


def test_an_output_that_is_not_a_probability_raises_nothing(tmp_path):
    model = OnnxRiskModel(
        _install(tmp_path, model=_logistic(WEIGHTS, BIAS, sigmoid=False)), ["CPUExecutionProvider"]
    )
    rules = replace(ruleset_from(CdsSettings()), risk_models=(model,))
    outcome = process(_patient(), record(obs("8867-4", 190, at=T0)), rules, now=T0)
    assert model.score([190, 1.0, 77]) > 1
    assert [a for a in outcome.alerts if a.rule_id.startswith("risk-")] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": "x"}, "the graph has inputs"),
        ({"output": "logits"}, "the graph has inputs"),
        ({"features": CONTRACT["features"][:2]}, "contract lists 2 features"),
        ({"features": [{"name": "x", "analyte": "bogus"}]}, "unknown analyte"),
        (
            {"thresholds": [{"at": 0.6, "severity": "critical"}, {"at": 0.3, "severity": "warning"}]},
            "ascending",
        ),
        ({"model": "missing.onnx"}, "not found"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_a_contract_that_does_not_fit_its_graph_stops_start_up(tmp_path, change, message):
    with pytest.raises(RuleConfigError, match=message):
        OnnxRiskModel(_install(tmp_path, contract={**CONTRACT, **change}), ["CPUExecutionProvider"])


def test_settings_take_a_list_of_contract_files(monkeypatch, tmp_path):
    monkeypatch.setenv("CLINSTREAM_CDS__RISK_MODELS", json.dumps([str(tmp_path / "a.json")]))
    from clinstream.settings import Settings

    assert Settings().cds.risk_models == (tmp_path / "a.json",)

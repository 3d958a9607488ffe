"""The risk-model slot: a model's declared feature contract, its features, its finding. Pure.

A deployment adds a risk model (a deterioration, readmission or sepsis model its data science
team validated) as two files: the ONNX graph and a JSON contract beside it. The contract names
the graph's input and output, each feature in input order (an analyte's latest value within a
window, the patient's age in years, or male as 1/0; a default when missing, or none: then the
model does not run), and the probability thresholds with their severity. The model runs
through ONNX Runtime (`inference.cds.risk_session`) on every record that changed one of its
analytes; this module decides what goes in and what comes out.

A contract example:

    {"id": "deterioration", "version": "2.1.0", "title": "Deterioration risk (24 h)",
     "model": "deterioration.onnx", "input": "features", "output": "probability",
     "output_index": 1, "citation": "Local model, validation report DS-2026-04",
     "features": [{"name": "heart_rate", "analyte": "heart_rate", "window_h": 12},
                  {"name": "age", "source": "age_years"},
                  {"name": "lactate", "analyte": "lactate", "window_h": 24, "default": 1.0}],
     "thresholds": [{"at": 0.3, "severity": "warning"}, {"at": 0.6, "severity": "critical"}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.cds.errors import RuleConfigError
from inference.cds.findings import Finding, input_of
from inference.cds.state import PatientState
from kernel.analytes import BY_NAME
from kernel.events import AlertInput, Severity

RULE_PREFIX = "risk"


class FeatureSpec(BaseModel):
    """One input column of the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: Literal["analyte", "age_years", "male"] = "analyte"
    analyte: str | None = None
    window_h: float = Field(default=24.0, gt=0)
    default: float | None = None

    @model_validator(mode="after")
    def _known(self) -> FeatureSpec:
        if self.source == "analyte" and self.analyte not in BY_NAME:
            raise ValueError(f"feature {self.name}: unknown analyte {self.analyte!r}")
        return self


class RiskThreshold(BaseModel):
    """At or above ``at`` (probability), a finding of ``severity``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(gt=0, le=1)
    severity: Severity


class RiskContract(BaseModel):
    """What a risk model reads and what its output means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    version: str
    title: str = Field(max_length=80)
    model: str = Field(description="The ONNX file, relative to the contract.")
    input: str
    output: str
    output_index: int = Field(default=0, ge=0, description="Column of the probability in the output.")
    citation: str
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    thresholds: tuple[RiskThreshold, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ascending(self) -> RiskContract:
        cuts = [t.at for t in self.thresholds]
        if cuts != sorted(set(cuts)):
            raise ValueError("thresholds must be strictly ascending")
        return self

    @property
    def rule_id(self) -> str:
        """The rule id its alerts carry."""
        return f"{RULE_PREFIX}-{self.id}"

    @property
    def analytes(self) -> frozenset[str]:
        """The analytes whose change runs the model."""
        return frozenset(f.analyte for f in self.features if f.analyte)


class RiskScorer(Protocol):
    """A loaded model: its contract and the probability for one feature vector."""

    @property
    def contract(self) -> RiskContract:
        """The model's contract."""
        ...

    def score(self, features: Sequence[float]) -> float:
        """The probability the model gives ``features`` (in contract order)."""
        ...


def parse_contract(text: str) -> RiskContract:
    """A contract from its JSON text (raises `RuleConfigError` naming what is wrong)."""
    try:
        return RiskContract.model_validate_json(text)
    except ValueError as exc:
        raise RuleConfigError(f"risk model contract: {exc}") from None


def _age(birth: date, at: datetime) -> float:
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return float(years)


def features(
    state: PatientState, contract: RiskContract, at: datetime
) -> tuple[list[float], tuple[AlertInput, ...]] | None:
    """The feature vector and what each value came from, or None when one is missing."""
    vector: list[float] = []
    inputs: list[AlertInput] = []
    for spec in contract.features:
        if spec.source == "age_years":
            value = _age(state.birth_date, at) if state.birth_date else spec.default
            if value is not None:
                inputs.append(AlertInput(label="Age", value=f"{value:.0f} years"))
        elif spec.source == "male":
            value = {"male": 1.0, "female": 0.0}.get(state.gender, spec.default)
            if value is not None:
                inputs.append(AlertInput(label="Sex", value=state.gender or "not recorded (default)"))
        else:
            analyte = BY_NAME[str(spec.analyte)]  # FeatureSpec checked the name
            reading = state.latest(analyte.name, at=at, window=timedelta(hours=spec.window_h))
            if reading is not None and reading.value is not None:
                value = float(reading.value)
                inputs.append(input_of(analyte.label, reading))
            else:
                value = spec.default
                if value is not None:
                    inputs.append(AlertInput(label=analyte.label, value=f"{value:g} (default)"))
        if value is None:
            return None
        vector.append(value)
    return vector, tuple(inputs)


def finding(
    contract: RiskContract, probability: float, inputs: tuple[AlertInput, ...], at: datetime
) -> Finding | None:
    """The finding for ``probability``: the highest threshold it reaches, or None."""
    reached = [(n, t) for n, t in enumerate(contract.thresholds) if probability >= t.at]
    if not reached:
        return None
    level, threshold = reached[-1]
    percent = f"{probability:.0%}"
    return Finding(
        rule_id=contract.rule_id,
        rule_version=contract.version,
        key=contract.rule_id,
        severity=threshold.severity,
        level=level + 1,
        summary=f"{contract.title}: {percent}"[:140],
        detail=f"{contract.title} is {percent} (model {contract.id} v{contract.version}), at or above "
        f"the {threshold.at:.0%} threshold.",
        inputs=inputs,
        thresholds=", ".join(f"≥ {t.at:.0%}: {t.severity}" for t in contract.thresholds),
        citation=contract.citation,
        at=at,
    )


def evaluate(
    state: PatientState, changed: frozenset[str], at: datetime, scorers: Sequence[RiskScorer]
) -> list[Finding]:
    """Each model whose analytes the record changed, run on the state at ``at``."""
    changed_analytes = {
        name for name, series in state.readings.items() if any(r.ref in changed for r in series)
    }
    out = []
    for scorer in scorers:
        contract = scorer.contract
        if not contract.analytes & changed_analytes:
            continue
        extracted = features(state, contract, at)
        if extracted is None:
            continue
        vector, inputs = extracted
        probability = scorer.score(vector)
        if not 0.0 <= probability <= 1.0:  # not a probability: the model is skipped (its adapter logs it)
            continue
        found = finding(contract, probability, inputs, at)
        if found is not None:
            out.append(found)
    return out

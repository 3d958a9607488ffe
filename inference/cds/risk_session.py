"""ONNX Runtime adapter of the risk-model slot: a contract file and the graph it names.

Loading checks the graph against its contract (the input and output names, a float input of
as many features as the contract lists), so a mismatched deployment stops at start-up instead
of scoring garbage. The session uses the configured providers (CUDA when onnxruntime-gpu and a
GPU are there, else CPU).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.cds.errors import RuleConfigError
from inference.cds.risk import RiskContract, parse_contract
from kernel.onnx_session import open_session

log = logging.getLogger(__name__)


class OnnxRiskModel:
    """A risk model: `RiskScorer` over an ONNX Runtime session."""

    def __init__(self, contract_path: Path, providers: Sequence[str], threads: int = 1) -> None:
        try:
            text = contract_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleConfigError(f"risk model contract {contract_path.name}: {exc.strerror}") from None
        self._contract = parse_contract(text)
        model_path = contract_path.parent / self._contract.model
        if not model_path.is_file():
            raise RuleConfigError(f"risk model {self._contract.id}: {self._contract.model} not found")
        self._session = open_session(
            model_path, providers, threads, model=f"{self._contract.id}/v{self._contract.version}"
        )
        self._check()

    def _check(self) -> None:
        contract = self._contract
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        spec = inputs.get(contract.input)
        if spec is None or contract.output not in outputs:
            raise RuleConfigError(
                f"risk model {contract.id}: the graph has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}, the contract names {contract.input!r} and {contract.output!r}"
            )
        width = spec.shape[-1] if spec.shape else None
        if spec.type != "tensor(float)" or (isinstance(width, int) and width != len(contract.features)):
            raise RuleConfigError(
                f"risk model {contract.id}: input {spec.type} {spec.shape}, contract lists "
                f"{len(contract.features)} features"
            )

    @property
    def contract(self) -> RiskContract:
        """The model's contract."""
        return self._contract

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses."""
        return list(self._session.get_providers())

    def score(self, features: Sequence[float]) -> float:
        """The probability for one feature vector."""
        batch = np.asarray([features], dtype=np.float32)
        [output] = self._session.run([self._contract.output], {self._contract.input: batch})
        probability = float(np.asarray(output).reshape(1, -1)[0, self._contract.output_index])
        if math.isnan(probability) or not 0.0 <= probability <= 1.0:
            log.error(
                "risk model %s returned %s, not a probability: no finding", self._contract.id, probability
            )
        return probability

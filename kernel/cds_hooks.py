"""CDS Hooks services that another stage contributes to the one CDS Hooks endpoint.

Decision support serves `/cds-services`: discovery, the JWT check of the EHR, the patient key,
the cards it showed and their feedback. A stage with cards of its own (assistance) hands it a
`HookService`: its discovery entry and a function from a hook call to cards. Cards are CDS Hooks
2.0 card objects; their ``uuid`` is deterministic and ``source.topic.code`` names the rule, so
feedback on them is kept like feedback on alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

RULES_SYSTEM = "https://clinstream.example/rules"
"""The code system of ``source.topic`` on every card (and of the rule in write-back): the rule id."""
OVERRIDE_SYSTEM = "https://clinstream.example/fhir/CodeSystem/override-reason"
"""The code system of the override reasons cards offer."""


class HookService(Protocol):
    """One CDS Hooks service a stage contributes."""

    @property
    def id(self) -> str:
        """The service id (`/cds-services/{id}`)."""

    @property
    def hook(self) -> str:
        """The hook it answers (``patient-view``, ``order-select``, ``order-sign`` …)."""

    def definition(self) -> dict[str, Any]:
        """Its entry in the discovery response."""

    async def cards(self, key: str, patient_id: str, context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Cards for a call: ``key`` is the patient's stream key, ``patient_id`` the EHR's Patient id
        (cards' resources reference it), ``context`` the hook's context.

        Raises:
            ValueError: the context is not what the hook needs (answered 400).
        """

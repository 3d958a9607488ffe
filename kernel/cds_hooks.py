"""CDS Hooks services that another stage contributes to the one CDS Hooks endpoint.

Decision support serves `/cds-services`: discovery, the JWT check of the EHR, the patient key,
the cards it showed and their feedback. A stage with cards of its own (assistance) hands it a
`HookService`: its discovery entry and a function from a hook call to cards. Cards are CDS Hooks
2.0 card objects; their ``uuid`` is deterministic and ``source.topic.code`` names the rule, so
feedback on them is kept like feedback on alerts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from kernel.fhir_models import model_class

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


def draft_orders(
    context: Mapping[str, Any], *, selected_only: bool, validate: Collection[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The draft orders of an `order-select` / `order-sign` context: (those to check, the other
    drafts). For order-select the ones to check are those ``context.selections`` names, for
    order-sign all of them. Orders of the types in ``validate`` must be valid FHIR.

    Raises:
        ValueError: draftOrders is not a Bundle, holds an invalid order, or selections is not a
            list (the caller answers 400 with the message).
    """
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("context.draftOrders must be a FHIR Bundle")
    orders = [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict) and isinstance(e.get("resource"), dict) and e["resource"].get("resourceType")
    ]
    for order in orders:
        if order["resourceType"] not in validate:
            continue
        try:
            model_class(str(order["resourceType"]))(**order)
        except (ValidationError, ValueError, TypeError) as exc:
            raise ValueError(f"context.draftOrders holds an invalid {order['resourceType']}") from exc
    selections = context.get("selections") or []
    if selected_only and not isinstance(selections, list):
        raise ValueError("context.selections must be a list of order references")
    chosen = {str(s).rsplit("/", 1)[-1] for s in selections}
    new = [o for o in orders if not selected_only or str(o.get("id")) in chosen]
    return new, [o for o in orders if o not in new]

"""The unknown codes decision support has counted and the mappings people confirmed, as
changelog replicas (`kernel.changelog_store.ChangelogTable`, in decision support's state file).

- **Counts** (`terminology.unmapped.v1`): one record per input partition and code, holding the
  code's sighting in that partition so far. The instance that owns the partition adds a batch's
  sightings to it and sends the sum with the batch's alerts and states (one transaction), so a
  count moves with its partition like a patient's state. Reading sums the partitions.
- **Mappings** (`terminology.mappings.v1`): one record per sender and code, the current version
  with every earlier one. Every instance reads them all; a change reaches the rules as soon as
  the reader applies it (`refresh`), without a restart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from inference.cds.rules import RuleSet
from inference.cds.terminology import CodeMapping, LocalCodes, Sighting, code_key, merge, split_key, summed
from kernel.changelog_store import UNKNOWN_OFFSET, ChangelogTable, Entry


class TerminologyStore:
    """Counts of unknown codes and confirmed mappings; the rules each sender's records get."""

    def __init__(self, path: Path | str, static: Mapping[str, str] | None = None) -> None:
        self.unmapped = ChangelogTable(path, "unmapped_code")
        self.mappings = ChangelogTable(path, "code_mapping")
        self._codes = LocalCodes(static)
        self._lock = threading.Lock()
        self._rules: dict[tuple[int, str], RuleSet] = {}
        self.refresh()

    def refresh(self, _changed: Iterable[str] = ()) -> None:
        """Read the confirmed mappings again (the mappings reader calls it on every change)."""
        codes = LocalCodes(self._codes.static)
        codes.replace(self.all_mappings())
        with self._lock:
            self._codes = codes
            self._rules = {}

    def local_codes(self, sender: str) -> Mapping[str, str]:
        """``system|code → analyte`` for ``sender``'s records."""
        return self._codes.for_sender(sender)

    def rules_for(self, rules: RuleSet, sender: str) -> RuleSet:
        """``rules`` reading ``sender``'s local codes as mapped (one copy per rule set and sender)."""
        key = (id(rules), sender)
        with self._lock:
            found = self._rules.get(key)
            if found is None:
                found = self._rules[key] = replace(rules, local_codes=self._codes.for_sender(sender))
            return found

    def changes(self, seen: Mapping[int, list[Sighting]]) -> list[Entry]:
        """The count records after adding ``seen`` (input partition → sightings of a batch)."""
        entries = []
        for partition, sightings in seen.items():
            for key, one in summed(sightings).items():
                row = json.dumps([partition, *split_key(key)], separators=(",", ":"))
                before = self.unmapped.get(row)
                total = merge(Sighting.model_validate_json(before), one) if before else one
                entries.append(Entry(row, total.model_dump_json().encode(), partition, UNKNOWN_OFFSET))
        return entries

    def unmapped_codes(self) -> list[Sighting]:
        """Every unknown code still unmapped, counted over all partitions, most seen first."""
        everywhere = summed(Sighting.model_validate_json(v) for _, v in self.unmapped.with_prefix(""))
        codes = self._codes
        left = [s for s in everywhere.values() if not codes.known(s)]
        return sorted(left, key=lambda s: (-s.count, s.key))

    def mapping(self, sender: str, system: str, code: str) -> CodeMapping | None:
        """The confirmed mapping of a sender's code, or None."""
        value = self.mappings.get(code_key(sender, system, code))
        return CodeMapping.model_validate_json(value) if value else None

    def all_mappings(self) -> list[CodeMapping]:
        """Every confirmed mapping."""
        return [CodeMapping.model_validate_json(v) for _, v in self.mappings.with_prefix("")]

    def close(self) -> None:
        """Close the tables."""
        self.unmapped.close()
        self.mappings.close()

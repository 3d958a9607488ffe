"""The clinical applications on the normalized stream, one subpackage per stage.

- `inference.cds`: decision support (rules, risk models, CDS Hooks, alert write-back);
- `inference.notes`: note drafting (charts, the generator, the grounding guard, review).

The two share nothing but the kernel.
"""

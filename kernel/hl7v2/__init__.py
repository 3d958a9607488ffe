"""HL7 v2, the one package for it: the parser (`parser`), the datatypes mappers read
(`datatypes`) and the segment writer every message we send is built with (`writer`).

Pure. The parser and datatypes may run compiled (`kernel.native`).
"""

from __future__ import annotations

from kernel.native import use_compiled

use_compiled(__name__, __path__)

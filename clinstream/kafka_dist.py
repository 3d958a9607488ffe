"""The Apache Kafka broker that the embedded runtime starts: fetched once from Maven Central.

`make kafka` (run by `make install`, hence by `make demo` and `make test`) copies
``org.apache.kafka:kafka_2.13`` and its runtime dependencies with ``mvn`` (kafka/pom.xml pins the
version) into ``${XDG_CACHE_HOME:-~/.cache}/clinstream/kafka-<version>/lib``, outside the clone
like the models, so every fresh clone reuses it. The copy is made in a temporary folder and
renamed into place, so a half-finished fetch is never taken for a broker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from clinstream.models import cache_root

POM = Path(__file__).with_name("kafka") / "pom.xml"
LOG_CONFIG = Path(__file__).with_name("kafka") / "log4j2.properties"
MIN_JAVA = 17


def kafka_version() -> str:
    """The Kafka version kafka/pom.xml pins."""
    found = re.search(r"<artifactId>kafka_2\.13</artifactId>\s*<version>([^<]+)</version>", POM.read_text())
    if found is None:  # pragma: no cover - the pom is ours
        raise RuntimeError(f"no kafka_2.13 version in {POM}")
    return found.group(1)


def kafka_lib(root: Path | None = None) -> Path:
    """The folder of the broker's jars (present once `fetch` finished)."""
    return (root or cache_root()) / f"kafka-{kafka_version()}" / "lib"


def java_major(java: str = "java") -> int | None:
    """The major version of ``java`` on the PATH, or None when there is none."""
    path = shutil.which(java)
    if path is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - the JVM on the PATH, a fixed argument
            [path, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def missing_reason(root: Path | None = None) -> str | None:
    """Why the embedded Apache Kafka cannot run here (no Java 17+, broker not fetched), or None."""
    major = java_major()
    if major is None:
        return "no Java runtime on the PATH"
    if major < MIN_JAVA:
        return f"Java {major} found, Apache Kafka needs {MIN_JAVA}+"
    if not any(kafka_lib(root).glob("kafka_2.13-*.jar")):
        return f"Apache Kafka not fetched into {kafka_lib(root).parent} (run `make kafka`)"
    return None


def fetch(root: Path | None = None) -> Path:
    """Copy the broker's jars from Maven Central (a no-op when they are there)."""
    lib = kafka_lib(root)
    if any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("mvn not found: install Maven to fetch Apache Kafka")
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        out = Path(tmp) / "lib"
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={out}"]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)  # noqa: S603 - our own fixed command
        out.rename(lib)
    return lib


def main() -> int:
    """`make kafka`: fetch the broker unless it is there; without Maven or Java, say what the
    embedded default falls back to and succeed (the Tansu broker still runs)."""
    reason = missing_reason()
    if reason is None:
        print(f"Apache Kafka {kafka_version()} ready in {kafka_lib().parent}")
        return 0
    if java_major() is None or shutil.which("mvn") is None:
        print(f"clinstream: {reason}; without Java 17+ and Maven the embedded broker is Tansu (in memory)")
        return 0
    fetch()
    print(f"Apache Kafka {kafka_version()} ready in {kafka_lib().parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

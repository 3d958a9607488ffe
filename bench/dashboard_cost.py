"""What the dashboard's instrumentation costs the pipeline, and what a dashboard sample costs.

- per record: `kernel.kafka.observe_done` (count + event age) on a consumer's commit path;
- per ONNX call: `MeteredSession.run` over a bare `InferenceSession.run` (a 1-node graph, so
  the difference is the timing itself);
- per sample: parsing the API's /metrics exposition and computing the Overview's tables
  (`parse_metrics` + `stage_rows` + `model_rows`) at a realistic label count.

Medians of 7 runs, printed. Usage: python bench/dashboard_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper
from prometheus_client import REGISTRY, generate_latest

from dashboard import queries as q
from kernel.kafka import STAGE_LATENCY, observe_done
from kernel.onnx_session import open_session

RUNS = 7


def _median(fn, n: int) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) / n)
    return statistics.median(times)


def main() -> None:
    received = datetime.now(UTC).isoformat().encode()
    records = [SimpleNamespace(headers=[("trace_id", b"t"), ("received_at", received)]) for _ in range(500)]
    per_record = _median(lambda: observe_done("bench", records, time.time()), len(records))
    print(f"observe_done per record        {per_record * 1e6:7.2f} µs")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity" / "model.onnx"
        path.parent.mkdir()
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        metered = open_session(path, ["CPUExecutionProvider"], 1, model="bench")
        feed = {"x": np.ones((4, 8), dtype=np.float32)}
        calls = 2000
        bare = _median(lambda: [metered.session.run(None, feed) for _ in range(calls)], calls)
        timed = _median(lambda: [metered.run(None, feed) for _ in range(calls)], calls)
    print(f"ONNX call, bare                {bare * 1e6:7.2f} µs")
    print(f"ONNX call, metered             {timed * 1e6:7.2f} µs  (+{(timed - bare) * 1e6:.2f} µs)")

    for n in range(40):  # a deployment's label spread: many senders and stages
        STAGE_LATENCY.labels(f"stage{n}").observe(0.1)
    text = generate_latest(REGISTRY).decode()
    series = len(q.parse_metrics([text], 0).values)

    def sample() -> None:
        prev = q.parse_metrics([text], 0.0)
        cur = q.parse_metrics([text], 5.0)
        q.stage_rows(prev, cur)
        q.model_rows(prev, cur)

    per_sample = _median(sample, 1)
    print(f"dashboard sample ({series} series) {per_sample * 1e3:7.2f} ms  (2 parses + tables)")


if __name__ == "__main__":
    main()

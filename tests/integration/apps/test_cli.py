"""`clinstream up` and `clinstream demo` as a user runs them: real processes, no orphans."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update(CLINSTREAM_VAR_DIR=str(tmp_path), CLINSTREAM_MLLP__PORT="0", CLINSTREAM_HTTP__PORT="0")
    # Faster group joins on the embedded broker (tests/conftest.py); the rest as a user runs it.
    session = os.environ.get("CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS", "10000")
    env["CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS"] = session
    return env


def _children(pid):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()


def _start_up(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinstream", "up"],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("clinstream ready:"):
            return proc, line
    proc.kill()
    pytest.fail("clinstream up never printed ready:\n" + "".join(lines[-30:]))


def _wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_up_prints_ready_and_stops_cleanly_on_ctrl_c_and_on_sigterm(tmp_path):
    """Two deployments started side by side (a start is the slow part): one stopped with
    SIGINT, as Ctrl-C does, the other with SIGTERM, as a service manager does."""
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(_start_up, tmp_path / name) for name in ("int", "term")]
    try:
        started = [f.result() for f in starting]  # a failed start fails the test here
        for (proc, ready), sig in zip(started, (signal.SIGINT, signal.SIGTERM), strict=True):
            for part in ("mllp=127.0.0.1:", "http=http://127.0.0.1:", "api_token="):
                assert part in ready
            children = _children(proc.pid)
            assert children, "the embedded broker should run as a child process"
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, (sig, out)
            assert "clinstream stopped" in out
            assert _wait_gone(children) == []
    finally:  # the other one of a failed pair is not left running
        for future in starting:
            if future.exception() is None and future.result()[0].poll() is None:
                future.result()[0].terminate()


def test_broker_dies_with_a_killed_parent(tmp_path):
    proc, _ = _start_up(tmp_path)
    children = _children(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()
    assert _wait_gone(children) == [], "orphan broker after kill -9 of clinstream"


def _demo(tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "clinstream", "demo"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_demo_runs_end_to_end(tmp_path):
    result = _demo(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "ACK codes              AA 32, AR 1" in out
    # The bundled feed holds one critical potassium and three creatinine rises that meet KDIGO:
    # 1.0 → 1.3 and 0.9 → 1.3 mg/dL within 48 h (stage 1), 0.5 → 1.1 mg/dL, 2.2 × baseline (stage 2).
    assert "alerts raised          4" in out
    assert "[critical] Critical high potassium: 6.4 mmol/L (critical-lab v2.0.0)" in out
    assert "KDIGO stage 2: creatinine 1.1 mg/dL" in out
    assert out.count("KDIGO stage 1: creatinine 1.3 mg/dL") == 2
    assert "dead letters           1" in out  # the message with a broken MSH-2, refused at the edge
    # the potassium written "5,1" converts, kept as sent, with its issue
    assert "with quality issues    1 converted despite them" in out
    assert "warning malformed-value OBX[2]-5" in out
    assert "OK: every accepted message accounted for" in out
    # every patient asked for diagnoses and treatments over the API; none of the feed's results
    # meets a diagnostic criterion (haemoglobins are at or above the WHO thresholds for each sex)
    assert "assistance             0 possible diagnoses, 0 treatment suggestions\n" in out
    search = out.split("search (patient", 1)[1]
    # Hybrid search: both potassium results of the patient come first (RRF may tie them).
    top = search.splitlines()[1:3]
    assert all("Potassium [Moles/volume] in Serum or Plasma" in line for line in top)
    assert any("6.4 mmol/L (critical high" in line for line in top)
    for name in ("ROE", "RICHARD", "100002"):
        assert name not in result.stderr, "patient identifiers in logs"
    again = _demo(tmp_path)  # a second demo in the same directory raises the same alerts
    assert again.returncode == 0, again.stdout + again.stderr
    assert "alerts raised          4" in again.stdout

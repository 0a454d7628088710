from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark files: $L2SMERGE_DATA_DIR, else ../shared/benchmarks."""
    env = os.environ.get("L2SMERGE_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "benchmarks"
    if not (path / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"benchmark data not found at {path} (set L2SMERGE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def served_tiny(tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with a tiny random model, started once per session
    (tens of seconds on a busy machine): yields (base URL, served model name)."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    from tiny import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("served") / "model", seed=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = model.parent / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    serve = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen(
        [str(serve), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"{url}/v1", str(model)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(autouse=True)
def registry_left_as_found():
    """A test that registers a merge method removes it again (other tests list, count and
    document the registry)."""
    methods = sys.modules.get("l2smerge.methods")
    before = dict(methods.METHODS) if methods is not None else None
    yield
    if before is not None:
        leaked = sorted(set(methods.METHODS) - set(before))
        assert not leaked, f"the test left merge methods registered: {', '.join(leaked)}"

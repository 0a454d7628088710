"""Hostile inputs (issue 16): each gets one line naming the file, tensor, key, line or URL,
exit code 2, no output left behind and the user's files untouched. Real files, real
processes, a real HTTP server on loopback, real full and read-only file systems (a tmpfs in a
private mount namespace where the system allows one, else a file-size limit or permissions)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from calibration_fixtures import write_calibration
from merge_helpers import cli
from safetensors.torch import load_file, save_file
from tiny import make_tiny_model

from l2smerge.eval import evaluate
from l2smerge.merge.checkpoint import Checkpoint
from l2smerge.util.errors import L2SError
from l2smerge.util.lock import exclusive, lock_file_for
from l2smerge.util.redact import redact

SECRET = "sk-live-hostile0123456789abcdef"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    base = make_tiny_model(root / "base", seed=0)
    model = make_tiny_model(root / "model", seed=1, base=base)
    sharded = make_tiny_model(root / "sharded", seed=1, base=base, max_shard_size="20KB")
    return base, model, sharded


@pytest.fixture()
def lab_data(tmp_path) -> Path:
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1), "level": 1} for i in range(4)]
    (tmp_path / "data" / "lab").mkdir(parents=True)
    (tmp_path / "data" / "lab" / "test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    return tmp_path / "data"


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` with a hash of its bytes (to show nothing changed)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(path.rglob("*"))
    }


def one_line(code: int, err: str, *expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def merge_fails(monkeypatch, capsys, tmp_path, args, *expected) -> str:
    out = tmp_path / "out"
    code, err = cli(monkeypatch, capsys, "merge", *args, "--no-progress", "-o", out)
    line = one_line(code, err, *expected)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return line


def run(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = ()):
    """`l2smerge ARGS` in a fresh process (optionally under a wrapper command)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": SECRET}
    cmd = [*prefix, sys.executable, "-m", "l2smerge", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def served_eval(url: str, lab_data: Path, run_dir: Path, *options: str) -> list:
    """`eval` arguments for the lab benchmark against an OpenAI-compatible server at `url`."""
    return ["eval", "served", "--backend", "openai", "--base-url", url, "--bench", "lab",
            "--data-dir", lab_data, *options, "-o", run_dir]  # fmt: skip


def _edit_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    header, data = edit(header, data) or (header, data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _by_offset(header: dict) -> list[str]:
    names = [k for k in header if k != "__metadata__"]
    return sorted(names, key=lambda k: header[k]["data_offsets"])


# -- real full and read-only file systems ---------------------------------------------------

_NAMESPACE_OK: bool | None = None


def _private_mounts() -> bool:
    """Whether this system lets us mount a tmpfs in a private user+mount namespace."""
    global _NAMESPACE_OK
    if _NAMESPACE_OK is None:
        try:
            probe = subprocess.run(
                ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=16k none /mnt"],
                capture_output=True,
                timeout=30,
            )
            _NAMESPACE_OK = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _NAMESPACE_OK = False
    return _NAMESPACE_OK


def on_full_disk(folder: Path, kb: int = 16) -> tuple[tuple[str, ...], str]:
    """A command prefix under which `folder` is a `kb` KB file system (ENOSPC), or, where
    namespaces are not allowed, under which no file may grow past 3/4 of that (EFBIG)."""
    folder.mkdir(parents=True, exist_ok=True)
    if _private_mounts():
        mount = f'mount -t tmpfs -o size={kb}k none "{folder}" && exec "$@"'
        return ("unshare", "-Urm", "sh", "-c", mount, "sh"), "No space left on device"
    limit = f"resource.setrlimit(resource.RLIMIT_FSIZE, ({kb * 750}, {kb * 750}))"
    limit = f"import os, resource, sys; {limit}; os.execv(sys.argv[1], sys.argv[1:])"
    return (sys.executable, "-c", limit), "File too large"


def read_only(folder: Path) -> tuple[tuple[str, ...], str]:
    """A command prefix under which `folder` is a read-only file system (EROFS), or, for a
    user other than root where namespaces are not allowed, a folder without write permission."""
    folder.mkdir(parents=True, exist_ok=True)
    if _private_mounts():
        mount = f'mount -t tmpfs -o ro,size=16k none "{folder}" && exec "$@"'
        return ("unshare", "-Urm", "sh", "-c", mount, "sh"), "Read-only file system"
    if os.geteuid() == 0:
        pytest.skip("root without mount namespaces: no way to make a folder unwritable")
    folder.chmod(0o555)
    return (), "Permission denied"


# -- 2. corrupt safetensors and files outside the model folder ------------------------------


@pytest.mark.parametrize(
    ("corruption", "expected"),
    [
        ("overlap", "overlaps the tensor before it"),
        ("shift", "overlaps"),
        ("negative_offsets", "non-negative integers"),
        ("negative_shape", "non-negative integers"),
    ],
)
def test_corrupt_safetensors_is_refused(pair, tmp_path, monkeypatch, capsys, corruption, expected):
    base, model, _ = pair
    broken = shutil.copytree(model, tmp_path / "broken")

    def edit(header, data):
        names = _by_offset(header)
        if corruption == "overlap":  # a tensor reads the bytes of the one before it
            a, b = header[names[2]]["data_offsets"]
            header[names[2]]["data_offsets"] = [a - 8, b - 8]
        elif corruption == "shift":  # offsets moved by a few bytes: all later data misread
            for name in names[3:]:
                a, b = header[name]["data_offsets"]
                header[name]["data_offsets"] = [a - 4, b - 4]
            return header, data[:-4]
        elif corruption == "negative_offsets":  # the header's own JSON read as weights
            a, b = header[names[0]]["data_offsets"]
            header[names[0]]["data_offsets"] = [a - 64, b - 64]
        else:  # -4 x -8 has as many elements as 4 x 8
            two_d = next(n for n in names if len(header[n]["shape"]) == 2)
            header[two_d]["shape"] = [-d for d in header[two_d]["shape"]]

    _edit_header(broken / "model.safetensors", edit)
    before = tree(broken)
    args = ["--base", base, "--model", broken, "--method", "task_arithmetic"]
    merge_fails(monkeypatch, capsys, tmp_path, args, str(broken / "model.safetensors"), expected)
    assert tree(broken) == before


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink", "symlink_loop"])
def test_model_folder_files_stay_inside_it(pair, tmp_path, monkeypatch, capsys, escape):
    base, _, sharded = pair
    broken = shutil.copytree(sharded, tmp_path / "m")
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / "weights.safetensors"
    shutil.move(shard, outside)
    if escape in ("dotdot", "absolute"):
        index_path = broken / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        name = "../elsewhere/weights.safetensors" if escape == "dotdot" else str(outside)
        index["weight_map"] = {
            k: (name if v == shard.name else v) for k, v in index["weight_map"].items()
        }
        index_path.write_text(json.dumps(index))
        expected = "is not a file inside the model folder"
    elif escape == "symlink":
        shard.symlink_to(outside)
        expected = "outside the model folder"
    else:
        shard.symlink_to(shard.name)
        expected = "cannot open"
    args = ["--base", base, "--model", broken, "--method", "task_arithmetic"]
    merge_fails(monkeypatch, capsys, tmp_path, args, str(broken), expected)


def test_hub_cache_snapshot_symlinks_are_followed(pair, tmp_path):
    _, model, _ = pair
    repo = tmp_path / "models--org--name"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in model.iterdir():
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    ckpt = Checkpoint(snapshot)
    assert torch.equal(
        ckpt.read("lm_head.weight"), load_file(model / "model.safetensors")["lm_head.weight"]
    )


def test_a_symlinked_side_file_is_never_copied_into_an_output(pair, tmp_path, monkeypatch, capsys):
    base, model, _ = pair
    private = tmp_path / "private.txt"
    private.write_text("my ssh key")
    broken = shutil.copytree(model, tmp_path / "m")
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer.json").symlink_to(private)
    args = ["--base", base, "--model", broken, "--tokenizer-from", broken, "--method", "ties"]
    merge_fails(monkeypatch, capsys, tmp_path, args, "tokenizer.json", "outside the model folder")


# -- 3. --force replaces only an earlier merge output --------------------------------------


def _user_folder(path: Path) -> Path:
    (path / "data").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "data" / "x.csv").write_text("1,2")
    return path


@pytest.mark.parametrize("target", ["folder", "dot", "file", "symlink", "output_with_own_file"])
def test_force_refuses_anything_but_an_earlier_output(pair, tmp_path, monkeypatch, capsys, target):
    base, model, _ = pair
    args = ["merge", "--base", base, "--model", model, "--method", "task_arithmetic"]
    if target == "output_with_own_file":
        out = tmp_path / "earlier"
        assert cli(monkeypatch, capsys, *args, "--no-progress", "-o", out)[0] == 0
        (out / "notes.txt").write_text("mine")
        expected = "'notes.txt'"
    elif target == "file":
        out = tmp_path / "afile"
        out.write_text("user data")
        expected = "is a file"
    elif target == "symlink":
        out = tmp_path / "link"
        out.symlink_to(_user_folder(tmp_path / "mine"))  # followed: it leads to user files
        expected = "no readable l2smerge.json"
    else:
        out = _user_folder(tmp_path / "mine")
        expected = "l2smerge.json" if target == "folder" else "current folder"
        if target == "dot":
            monkeypatch.chdir(out)
    before = {p.name: tree(p) for p in tmp_path.iterdir()}
    code, err = cli(
        monkeypatch,
        capsys,
        *args,
        "--force",
        "--no-progress",
        "-o",
        "." if target == "dot" else out,
    )
    one_line(code, err, expected)
    assert {p.name: tree(p) for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_force_replaces_an_earlier_output_and_leaves_nothing_else(
    pair, tmp_path, monkeypatch, capsys, atomic_swap
):
    import l2smerge.util.atomic as atomic

    if not atomic_swap:  # a system without renameat2: the two-rename fallback
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    base, model, _ = pair
    out = tmp_path / "out"
    args = [
        "merge",
        "--base",
        base,
        "--model",
        model,
        "--method",
        "task_arithmetic",
        "--no-progress",
        "-o",
        out,
    ]
    assert cli(monkeypatch, capsys, *args, "--alpha", "0.1")[0] == 0
    first = load_file(out / "model.safetensors")["lm_head.weight"]
    code, err = cli(monkeypatch, capsys, *args, "--alpha", "0.9", "--force")
    assert code == 0, err
    assert not torch.equal(load_file(out / "model.safetensors")["lm_head.weight"], first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- 5. one process per output --------------------------------------------------------------


def test_a_second_command_on_a_locked_output_is_refused(pair, tmp_path, monkeypatch, capsys):
    base, model, _ = pair
    out = tmp_path / "merged"
    with exclusive(out, beside=True):
        code, err = cli(
            monkeypatch,
            capsys,
            "merge",
            "--base",
            base,
            "--model",
            model,
            "--method",
            "ties",
            "--no-progress",
            "-o",
            out,
        )
        one_line(code, err, f"{out} is in use by pid {os.getpid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # lock file removed on release

    sweep = tmp_path / "sweep"
    spec = {
        "models": [str(model)],
        "points": [{"method": "average"}],
        "eval": {"benches": ["lab"], "limit": 1},
    }
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    with exclusive(sweep):
        code, err = cli(monkeypatch, capsys, "sweep", tmp_path / "s.yaml", "-q", "-o", sweep)
        one_line(code, err, f"{sweep} is in use by pid {os.getpid()}")
    assert not sweep.exists()  # made only to hold the lock: removed again


def test_two_evals_into_one_run_directory(tmp_path, lab_data):
    """The second process stops at once; the first writes every item exactly once."""
    gate = threading.Event()  # the server answers nothing until the second process is done
    server = Server(lambda body: _reply("\\boxed{1}"), gate=gate)
    args = served_eval(
        server.url, lab_data, tmp_path / "run", "--concurrency", "1", "--no-progress"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "l2smerge", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        lock = lock_file_for(tmp_path / "run", beside=False)
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = run(*args)
        one_line(second.returncode, second.stderr, f"is in use by pid {first.pid}")
        gate.set()
        assert first.wait(timeout=120) == 0, first.communicate()
    finally:
        gate.set()
        first.kill()
        server.close()
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == [0, 1, 2, 3]


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path):
    hold = (
        "import sys, time; from l2smerge.util.lock import exclusive\n"
        "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(L2SError, match=f"in use by pid {proc.pid}"), exclusive(tmp_path / "run"):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with exclusive(tmp_path / "run"):  # the kernel dropped the dead holder's lock
        pass


# -- 7. NaN in vocabulary rows only the --tokenizer-from input has --------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (float("nan"), "float32", "holds NaN or Inf"),
        (1e6, "float16", "beyond float16's range"),
    ],
)
def test_values_in_rows_only_the_tokenizer_input_has(
    pair, tmp_path, monkeypatch, capsys, value, dtype, expected
):
    base, model, _ = pair
    bigger = shutil.copytree(model, tmp_path / "bigger")
    state = load_file(bigger / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = torch.cat([state[name], torch.randn(16, state[name].shape[1])])
    state["lm_head.weight"][-3, 5] = value
    save_file(state, bigger / "model.safetensors", metadata={"format": "pt"})
    args = [
        "--base",
        base,
        "--model",
        bigger,
        "--tokenizer-from",
        bigger,
        "--method",
        "task_arithmetic",
        "--dtype",
        dtype,
    ]
    merge_fails(monkeypatch, capsys, tmp_path, args, str(bigger), "'lm_head.weight'", expected)


# -- 8. one line instead of a traceback ------------------------------------------------------


def _config(model: Path, tmp: Path, edit) -> Path:
    copy = shutil.copytree(model, tmp / "m")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(edit(config)))
    return copy


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("config_list", "a model config is a JSON object, not a list"),
        ("text_config_string", "text_config must be a JSON object"),
        ("model_symlink_loop", "cannot open"),
        ("alpha_1e39", "alpha = 1e+39 is beyond float32's range"),
        ("device_tpu", "'tpu': not a device"),
        ("seed_2_70", "seed: 1180591620717411303424 is outside"),
        ("yaml_list", "a merge config is a YAML mapping"),
        ("yaml_not_utf8", "not valid UTF-8"),
    ],
)
def test_merge_one_line_errors(pair, tmp_path, monkeypatch, capsys, case, expected):
    base, model, _ = pair
    args: list = ["--base", base, "--model", model, "--method", "task_arithmetic"]
    if case == "config_list":
        args[3] = _config(model, tmp_path, lambda c: [c])
    elif case == "text_config_string":
        args[3] = _config(model, tmp_path, lambda c: {**c, "text_config": "x"})
    elif case == "model_symlink_loop":
        args[3] = tmp_path / "loop"
        args[3].symlink_to("loop")
    elif case == "alpha_1e39":
        args += ["--alpha", "1e39"]
    elif case == "device_tpu":
        args += ["--device", "tpu"]
    elif case == "seed_2_70":
        args += ["--seed", str(2**70)]
    elif case == "yaml_list":
        (tmp_path / "c.yaml").write_text("- method: ties\n")
        args = [tmp_path / "c.yaml"]
    else:
        (tmp_path / "c.yaml").write_bytes(b"method: ties\n# caf\xe9\n")
        args = [tmp_path / "c.yaml"]
    merge_fails(monkeypatch, capsys, tmp_path, args, expected)


def test_custom_code_base_for_aim_is_refused_without_running_it(
    pair, tmp_path, monkeypatch, capsys
):
    base, model, _ = pair
    ran = tmp_path / "code-ran"
    custom = _config(
        base,
        tmp_path,
        lambda c: {
            **c,
            "model_type": "evil",
            "architectures": ["Evil"],
            "auto_map": {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"},
        },
    )
    (custom / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('x')\n")
    args = [
        "--base",
        custom,
        "--model",
        model,
        "--method",
        "aim_ties",
        "--calibration",
        write_calibration(tmp_path / "cal.jsonl"),
    ]
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    merge_fails(monkeypatch, capsys, tmp_path, args, "config.json", "auto_map", "never runs")
    assert not ran.exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bench_not_utf8", "test.jsonl:5: not valid UTF-8 (byte 0xe9"),
        ("replay_not_utf8", "r.jsonl:2: not valid UTF-8"),
        ("prompt_not_utf8", "t.txt: cannot read the prompt template"),
        ("device_tpu", "--device 'tpu': not a device"),
        ("batch_size_0", "--batch-size must be at least 1"),
        ("out_under_a_file", "afile: is a file, not a folder"),
    ],
)
def test_eval_one_line_errors(tmp_path, lab_data, monkeypatch, capsys, case, expected):
    replay = tmp_path / "r.jsonl"
    replay.write_text(json.dumps({"bench": "lab", "id": 0, "response": "\\boxed{1}"}) + "\n")
    out = tmp_path / "run"
    args = ["eval", "m", "--bench", "lab", "--data-dir", lab_data, "--no-progress"]
    replay_args = ["--backend", "replay", "--responses", replay]
    if case == "bench_not_utf8":
        with (lab_data / "lab" / "test.jsonl").open("ab") as f:
            f.write(b'{"question": "caf\xe9", "answer": "1"}\n')
        args += replay_args
    elif case == "replay_not_utf8":
        with replay.open("ab") as f:
            f.write(b'{"bench": "lab", "id": 1, "response": "\xff"}\n')
        args += replay_args
    elif case == "prompt_not_utf8":
        (tmp_path / "t.txt").write_bytes(b"\xff {question}")
        args += ["--prompt", tmp_path / "t.txt"]
    elif case == "device_tpu":
        args += ["--device", "tpu"]
    elif case == "batch_size_0":
        args += ["--batch-size", "0"]
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "run"
        args += replay_args
    code, err = cli(monkeypatch, capsys, *args, "-o", out)
    one_line(code, err, expected)
    assert not (tmp_path / "run").exists()


class Server:
    """An OpenAI-compatible endpoint on 127.0.0.1 answering with `reply(body) -> (status,
    bytes)` (or a JSON-able object for 200)."""

    def __init__(self, reply, gate: threading.Event | None = None):
        outer = self
        self.reply, self.gate = reply, gate

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if outer.gate is not None:
                    outer.gate.wait(timeout=120)
                answer = outer.reply({**body, "headers": dict(self.headers)})
                status, data = answer if isinstance(answer, tuple) else (200, answer)
                data = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda *args: None  # a client that hung up: not our output
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(content, usage=None, **message):
    return {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, **message},
            }
        ],
        "usage": {"completion_tokens": 3} if usage is None else usage,
    }


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (_reply("\\boxed{1}", usage="lots"), "without a token count"),
        ({"choices": [{"index": 0, "message": None}]}, "whose message is not an object"),
        (_reply([1, 2]), "whose text is a list"),
        (_reply(42), "whose text is a int"),
        (_reply("x", usage={"completion_tokens": -3}), "without a token count"),
        (_reply("x", reasoning_content=5), "whose text is a int"),
        ([1, 2], "without choices"),
        ({"choices": None}, "without choices"),
    ],
)
def test_malformed_server_replies(tmp_path, lab_data, monkeypatch, capsys, reply, expected):
    server = Server(lambda body: reply)
    try:
        code, err = cli(
            monkeypatch,
            capsys,
            *served_eval(server.url, lab_data, tmp_path / "run", "--retries", "0", "--no-progress"),
        )
    finally:
        server.close()
    one_line(code, err, server.url, "lab id", expected)


@pytest.mark.parametrize(
    "url",
    [
        "localhost:8000/v1",
        "http://",
        "ftp://127.0.0.1/v1",
        "http://[::1/v1",
        "http://127.0.0.1:99999/v1",
        f"http://user:{SECRET}@/v1",
    ],
)
def test_malformed_base_url(tmp_path, lab_data, monkeypatch, capsys, url):
    code, err = cli(
        monkeypatch,
        capsys,
        *served_eval(url, lab_data, tmp_path / "run"),
    )
    one_line(code, err, "--base-url")
    assert SECRET not in err


def test_merge_on_a_full_disk(pair, tmp_path):
    base, model, _ = pair
    prefix, reason = on_full_disk(tmp_path / "disk")
    proc = run(
        "merge",
        "--base",
        base,
        "--model",
        model,
        "--method",
        "task_arithmetic",
        "--no-progress",
        "-o",
        tmp_path / "disk" / "out",
        prefix=prefix,
    )
    one_line(proc.returncode, proc.stderr, str(tmp_path / "disk"), reason, "cannot write")
    assert not (tmp_path / "disk" / "out").exists()


def test_eval_results_on_a_full_disk(tmp_path, lab_data):
    replay = tmp_path / "r.jsonl"
    long = "Let me think. " * 400
    rows = [{"bench": "lab", "id": i, "response": f"{long}\\boxed{{{i + 1}}}"} for i in range(4)]
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix, reason = on_full_disk(tmp_path / "disk")
    proc = run(
        "eval",
        "m",
        "--backend",
        "replay",
        "--responses",
        replay,
        "--bench",
        "lab",
        "--data-dir",
        lab_data,
        "--no-progress",
        "-o",
        tmp_path / "disk" / "run",
        prefix=prefix,
    )
    one_line(proc.returncode, proc.stderr, "results.jsonl", reason, "results so far are kept")


def test_sweep_state_on_a_full_disk(pair, tmp_path, lab_data):
    _, model, _ = pair
    spec = {
        "models": [str(model)],
        "points": [{"method": "average"}],
        "eval": {
            "benches": ["lab"],
            "data_dir": str(lab_data),
            "limit": 1,
            "max_tokens": 2,
            "device": "cpu",
        },
        "selection": {"rule": "most_accurate"},
    }
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    prefix, reason = on_full_disk(tmp_path / "disk", kb=4)  # room for the lock, not sweep.json
    proc = run("sweep", tmp_path / "s.yaml", "-q", "-o", tmp_path / "disk" / "sw", prefix=prefix)
    one_line(proc.returncode, proc.stderr, str(tmp_path / "disk" / "sw" / "sweep.json"), reason)


@pytest.mark.parametrize("command", ["merge", "eval"])
def test_read_only_output(pair, tmp_path, lab_data, command):
    base, model, _ = pair
    prefix, reason = read_only(tmp_path / "ro")
    if command == "merge":
        args = ["merge", "--base", base, "--model", model, "--method", "ties", "--no-progress"]
    else:
        replay = tmp_path / "r.jsonl"
        replay.write_text(json.dumps({"bench": "lab", "id": 0, "response": "\\boxed{1}"}) + "\n")
        args = [
            "eval",
            "m",
            "--backend",
            "replay",
            "--responses",
            replay,
            "--bench",
            "lab",
            "--data-dir",
            lab_data,
            "--no-progress",
        ]
    proc = run(*args, "-o", tmp_path / "ro" / "out", prefix=prefix)
    one_line(proc.returncode, proc.stderr, str(tmp_path / "ro"), reason)


# -- 9. secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 500])
def test_api_key_echoed_by_a_server_is_never_printed_or_written(tmp_path, lab_data, status):
    def echo(body):
        if status == 401:
            return 401, f"bad request, you sent {body['headers']}".encode()
        auth = body["headers"].get("Authorization")
        return 500, json.dumps({"error": "unauthorized", "authorization": auth}).encode()

    server = Server(echo)
    try:
        proc = run(
            *served_eval(server.url, lab_data, tmp_path / "run", "--retries", "0", "--no-progress"),
        )
    finally:
        server.close()
    line = one_line(proc.returncode, proc.stderr, f"HTTP {status}", "***")
    assert SECRET not in proc.stdout + proc.stderr and "sk-live" not in line
    assert all(SECRET not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_api_key_in_a_response_is_not_written(tmp_path, lab_data):
    server = Server(lambda body: _reply(f"the key is {SECRET}. \\boxed{{1}}"))
    try:
        proc = run(
            *served_eval(server.url, lab_data, tmp_path / "run"),
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "run" / "results.jsonl").read_text()
    assert SECRET not in text and "the key is ***" in text


def test_redact_masks_keys_and_credential_shapes(monkeypatch):
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", "plainvalue123")
    cases = {
        "{'authorization': 'Bearer abc.def-123', 'host': 'x'}": "Bearer ***",
        "Authorization: Basic dXNlcjpwYXNz": "Basic ***",
        "key sk-proj-ABCDEFGH12345678 was rejected": "key *** was rejected",
        "hf_abcdefghijklmnopqrstuvwx": "***",
        "http://user:pa55word@host:8000/v1": "http://user:***@host:8000/v1",
        '{"api_key": "qwertyuiop"}': '{"api_key": "***"}',
        "echo plainvalue123 back": "echo *** back",
    }
    for text, expected in cases.items():
        assert redact(text) == expected or expected in redact(text), text
    for ordinary in (
        "Wait, let me check the token count.",
        "--max-tokens 4096",
        "the secret is 42",
    ):
        assert redact(ordinary) == ordinary


# -- 10. loose YAML values, checks before work, file modes, messages ------------------------


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ("{density: yes}", "parameters.density: expected a number, got true"),
        ("{density: lots}", "parameters.density: expected a number, got 'lots'"),
        ("{alpha: '0.5'}", "parameters.alpha: expected a number, got '0.5'"),
        ("{alpha: [a, b]}", "parameters.alpha: expected a number"),
        ("{density: 1.5}", "density = 1.5 is outside [0.0, 1.0]"),
        ("{alpha: 1.0e+39}", "beyond float32's range"),
    ],
)
def test_yaml_values_are_checked_at_load(tmp_path, monkeypatch, capsys, parameters, expected):
    # The model paths do not exist: the error must come from loading the file, not merging.
    config = tmp_path / "c.yaml"
    config.write_text(f"method: ties\nbase: nowhere\nmodels: [nowhere]\nparameters: {parameters}\n")
    merge_fails(monkeypatch, capsys, tmp_path, [config], str(config), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seed: abc\n", "seed: expected a whole number, got 'abc'"),
        ("seed: yes\n", "seed: expected a whole number, got True"),
        ("models: 5\n", "models: expected a list, got 5"),
        ("allow_pickle: sure\n", "allow_pickle: expected true or false, got 'sure'"),
        (
            "parameters:\n  density: 0.2\n  density: 0.9\n",
            "line 6: key 'density' given twice (first on line 5)",
        ),
        ("bse: x\n", "bse: unknown key (known: allow_pickle, base"),
    ],
)
def test_yaml_errors_are_plain_sentences(tmp_path, monkeypatch, capsys, text, expected):
    config = tmp_path / "c.yaml"
    head = "method: dare_ta\nbase: nowhere\n" + (
        "models: [nowhere]\n" if "models" not in text else ""
    )
    config.write_text(head + text)
    merge_fails(monkeypatch, capsys, tmp_path, [config], expected)


def test_on_in_yaml_is_the_key_on(tmp_path, monkeypatch, capsys):
    from calibration_fixtures import make_family

    base, (child,) = make_family(tmp_path / "family", children=1)
    config = tmp_path / "aim.yaml"
    config.write_text(
        f"method: aim\non: ties\nbase: {base}\nmodels: [{child}]\n"
        f"calibration: {write_calibration(tmp_path / 'cal.jsonl')}\n"
        "parameters: {omega: 0.4, density: 0.5}\n"
    )
    monkeypatch.setenv("L2SMERGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, err = cli(monkeypatch, capsys, "merge", config, "--no-progress", "-o", out)
    assert code == 0, err
    assert err == ""  # --no-progress: no calibration or transformers bars either
    record = json.loads((out / "l2smerge.json").read_text())
    assert (record["method"], record["on"]) == ("aim", "ties")


def test_sweep_checks_every_point_before_any_runs(pair, tmp_path, monkeypatch, capsys):
    from l2smerge.choose.sweep_spec import load_sweep

    _, model, _ = pair
    head = f"models: [{model}]\neval: {{benches: [lab], limit: 1}}\n"
    cases = {
        "grid:\n  - {method: ties, density: [0.5, 1.5]}\n": "density = 1.5 is outside",
        "points:\n  - {method: ties, density: yes}\n": "points[0].density: expected a number",
        "points:\n  - {method: ties, density: lots}\n": "expected a number, got 'lots'",
        "points:\n  - {method: ties, alpha: 1.0e+39}\n": "beyond float32's range",
        "search: {method: ties, params: {density: [0.1, 2.0]}, trials: 2}\n": "density = 2.0",
        "points: [{method: average}]\nmerge: {dtype: int8}\n": "merge.dtype: expected 'bfloat16'",
        "points: [{method: average}]\nmerge: {device: tpu}\n": "merge.device: 'tpu'",
        "points: [{method: ties}]\n": "base: ties needs a base model",
        "grid:\n  - {method: task_arithmetic, alpha: [0.1, 0.2, 0.3], "
        + ", ".join(f"x{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for i in range(5))
        + "}\n": "300000 combinations",
    }
    for body, expected in cases.items():
        (tmp_path / "s.yaml").write_text(head + body)
        code, err = cli(
            monkeypatch, capsys, "sweep", tmp_path / "s.yaml", "-q", "-o", tmp_path / "sweep"
        )
        one_line(code, err, "s.yaml", expected)
        assert not (tmp_path / "sweep").exists()  # nothing ran, nothing was written
    on = f"base: {model}\npoints:\n  - {{method: aim, on: ties, omega: 0.4}}\n"
    (tmp_path / "s.yaml").write_text(head + on)
    points = load_sweep(tmp_path / "s.yaml").points
    assert points == [{"method": "aim", "on": "ties", "omega": 0.4}]


def test_files_in_one_output_folder_share_one_mode(pair, tmp_path, monkeypatch, capsys, lab_data):
    base, model, _ = pair
    (model / "tokenizer.json").chmod(0o600)  # an input file's own mode is not copied
    try:
        code, err = cli(
            monkeypatch,
            capsys,
            "merge",
            "--base",
            base,
            "--model",
            model,
            "--tokenizer-from",
            model,
            "--method",
            "ties",
            "--no-progress",
            "-o",
            tmp_path / "merged",
        )
    finally:
        (model / "tokenizer.json").chmod(0o644)
    assert code == 0, err
    replay = tmp_path / "r.jsonl"
    replay.write_text(json.dumps({"bench": "lab", "id": 0, "response": "\\boxed{1}"}) + "\n")
    summary = evaluate(
        "m",
        "lab",
        out_dir=tmp_path / "run",
        backend="replay",
        responses=replay,
        data_dir=lab_data,
        progress=False,
    )
    assert summary["benchmarks"]["lab"]["n"] == 1
    for folder in (tmp_path / "merged", tmp_path / "run"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert len(set(modes.values())) == 1, modes


def test_missing_head_names_who_has_it(pair, tmp_path, monkeypatch, capsys):
    base, model, _ = pair
    headless = []
    for src in (base, model):
        copy = shutil.copytree(src, tmp_path / f"{src.name}-headless")
        state = load_file(copy / "model.safetensors")
        state.pop("lm_head.weight")
        save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
        headless.append(copy)
    args = ["--base", headless[0], "--model", headless[1], "--method", "task_arithmetic"]
    line = merge_fails(monkeypatch, capsys, tmp_path, args, "'lm_head.weight' is missing")
    assert "present in" not in line and "no input stores" in line
    args = ["--base", base, "--model", headless[1], "--method", "task_arithmetic"]
    merge_fails(monkeypatch, capsys, tmp_path, args, f"(present in {base})")


def test_password_in_the_base_url_is_never_printed_or_written(tmp_path, lab_data):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:{SECRET}@127.0.0.1:{port}/v1"
    proc = run(
        *served_eval(url, lab_data, tmp_path / "run", "--retries", "0", "--no-progress"),
    )
    one_line(proc.returncode, proc.stderr, "user:***@127.0.0.1", "ConnectError")
    assert SECRET not in proc.stdout + proc.stderr
    assert all(SECRET not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_a_failed_eval_exits_without_waiting_for_requests_in_flight(tmp_path, lab_data):
    """A server error on one request ends the run at once, though another request is still
    waiting on a server that does not answer (its timeout is 600 s): nothing holds the
    process open."""
    gate = threading.Event()
    asked: list[int] = []

    def reply(body):
        asked.append(1)
        if len(asked) == 1:
            return _reply("x", usage={"completion_tokens": -3})  # a fatal server error
        gate.wait(timeout=120)  # the others hang
        return _reply("\\boxed{1}")

    server = Server(reply)
    try:
        started = time.monotonic()
        result = run(
            *served_eval(
                server.url, lab_data, tmp_path / "run", "--concurrency", "2", "--no-progress"
            ),
        )
        elapsed = time.monotonic() - started
    finally:
        gate.set()
        server.close()
    one_line(result.returncode, result.stderr, "without a token count")
    assert len(asked) >= 2, "the second request was never in flight"
    assert elapsed < 60, f"the process stayed alive {elapsed:.0f} s after the error"

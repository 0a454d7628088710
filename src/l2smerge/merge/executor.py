"""The streaming merge executor: a plain loop over tensor names.

For each output tensor: read the same-named tensor of every input (the next one is read in a
background thread while this one is computed), convert to float32 on the chosen device, call
the method's pure function, check the result, cast it to the output dtype and append its bytes
to the output shard. Memory stays at a few copies of the largest tensor whatever the model
size. Everything is checked before the first byte is written, and the output is built in a
temporary folder beside OUT and renamed at the end, so a failed merge never leaves OUT behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2smerge.merge.checkpoint import (
    DTYPE_NAMES,
    Checkpoint,
    PlannedTensor,
    ShardedWriter,
    copy_side_files,
    dtype_name,
    parse_size,
)
from l2smerge.merge.config import MergeConfig
from l2smerge.merge.layers import count_layers
from l2smerge.merge.parameters import ParameterResolver
from l2smerge.merge.provenance import Fingerprinter, write_provenance
from l2smerge.methods import MergeMethod
from l2smerge.methods.registry import uses_base
from l2smerge.util.atomic import replace_folder, write_json_atomic
from l2smerge.util.device import check_device
from l2smerge.util.errors import L2SError, warn, writing
from l2smerge.util.lock import holds_lock
from l2smerge.util.paths import resolved

# lm_head name -> the embedding it is tied to, per architecture family.
TIED_HEADS = {
    "lm_head.weight": (
        "model.embed_tokens.weight",
        "model.language_model.embed_tokens.weight",
        "transformer.wte.weight",
    ),
}
# Tensors whose first dimension is the vocabulary (may differ between models: see _plan).
VOCAB_MARKERS = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out")


@dataclass
class TensorJob:
    """One output tensor: where each input's copy is read from and how rows line up."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    sources: list[tuple[Checkpoint, str]]  # (checkpoint, stored name) per input: models, base
    shared_rows: int | None = None  # vocab rule: rows merged; the rest come from `reference`
    reference: tuple[Checkpoint, str] | None = None
    copy_only: bool = False  # non-float tensors: copied from the reference
    block_rows: int | None = None  # elementwise method on a large tensor: rows per block
    inputs_checked: bool = False  # every input already found finite (TIES's first pass)


@dataclass
class MergePlan:
    config: MergeConfig
    method: MergeMethod
    checkpoints: dict[Path, Checkpoint]
    models: list[Checkpoint]
    base: Checkpoint | None
    reference: Checkpoint
    jobs: list[TensorJob]
    out_dtype: torch.dtype
    tied_output: bool
    num_layers: int
    device: torch.device
    left_out: list[str] = field(default_factory=list)  # --model inputs that are the base


# -- checking and planning -------------------------------------------------------------------


def _tied_source(ckpt: Checkpoint, name: str) -> str | None:
    if name in ckpt:
        return name
    if ckpt.tie_word_embeddings:
        for embed in TIED_HEADS.get(name, ()):
            if embed in ckpt:
                return embed
    return None


def _num_layers(ckpt: Checkpoint) -> int:
    """The number of decoder layers: config.json's num_hidden_layers when it is a positive
    whole number, else counted from the tensor names."""
    cfg = ckpt.config.get("text_config") or ckpt.config
    layers = cfg.get("num_hidden_layers")
    if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0:
        return layers
    return max(count_layers(ckpt.tensors), 1)


def _missing_tensor(
    ckpt: Checkpoint, name: str, used: list[Checkpoint], reference: Checkpoint
) -> str:
    """Why `ckpt` cannot supply `name`, saying which inputs do have it."""
    holders = [c for c in used if _tied_source(c, name) is not None]
    if holders:
        return f"{ckpt.path}: tensor {name!r} is missing (present in {holders[0].path})"
    if name in TIED_HEADS:
        return (
            f"{ckpt.path}: tensor {name!r} is missing: no input stores an output head, and "
            "not every input's config.json ties it to the embeddings (tie_word_embeddings)"
        )
    return f"{ckpt.path}: tensor {name!r} is missing (only {reference.path} has it)"


def _dominant_float_dtype(ckpt: Checkpoint) -> torch.dtype:
    sizes: dict[torch.dtype, int] = {}
    for info in ckpt.tensors.values():
        if info.dtype.is_floating_point:
            sizes[info.dtype] = sizes.get(info.dtype, 0) + info.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32


def _same_checkpoint(a: Path, b: Path, b_fingerprint: str | None) -> bool:
    if resolved(a) == resolved(b):
        return True
    if b_fingerprint is None:
        return False
    from l2smerge.util.cache import model_fingerprint

    try:
        return model_fingerprint(a) == b_fingerprint
    except L2SError:  # not a safetensors model folder: opening it will say what is wrong
        return False


def drop_base_copies(config: MergeConfig) -> MergeConfig:
    """Leave out every --model that is the --base checkpoint (same folder or same content
    fingerprint), with a warning: its task vector is zero. For task arithmetic, TIES, DARE,
    LoRE with a base and AIM it adds nothing; for Twin it would pull the uniform add-back
    towards the base and for Sens it would take a share of the coefficients and cost a
    gradient pass, so leaving it out gives the single-task merge the study ran
    (docs/methods.md, "A --model that is the base")."""
    from l2smerge.util.cache import model_fingerprint

    assert config.base is not None
    try:
        base_fingerprint: str | None = model_fingerprint(config.base)
    except L2SError:
        base_fingerprint = None
    is_base = [_same_checkpoint(m.path, config.base, base_fingerprint) for m in config.models]
    if not any(is_base):
        return config
    kept = [m for m, same in zip(config.models, is_base, strict=True) if not same]
    dropped = [str(m.path) for m, same in zip(config.models, is_base, strict=True) if same]
    if not kept:
        raise L2SError(
            f"every --model is the --base checkpoint {config.base}: nothing to merge "
            "(pass the fine-tuned model, e.g. --base SYSTEM1 --model SYSTEM2)"
        )
    warn(
        f"--model {', '.join(dropped)} is the --base checkpoint (a zero task vector); "
        f"{config.method} merges the other {len(kept)} model(s) without it"
    )
    return config.model_copy(update={"models": kept})


def _plan_job(
    name: str, used: list[Checkpoint], reference: Checkpoint, out_dtype: torch.dtype
) -> TensorJob:
    """One output tensor: each input's stored copy, and how the rows line up when only the
    vocabulary rows differ (VOCAB_MARKERS); a non-float tensor is copied from `reference`."""
    sources = []
    for ckpt in used:
        stored = _tied_source(ckpt, name)
        if stored is None:
            raise L2SError(_missing_tensor(ckpt, name, used, reference))
        sources.append((ckpt, stored))
    ref_stored = _tied_source(reference, name)
    assert ref_stored is not None
    ref_info = reference.info(ref_stored)
    shapes = [ckpt.info(stored).shape for ckpt, stored in sources]
    job = TensorJob(name, ref_info.shape, out_dtype, sources)
    if not ref_info.dtype.is_floating_point:
        job.copy_only = True
        job.dtype = ref_info.dtype
        job.sources = [(reference, ref_stored)]
    elif any(s != ref_info.shape for s in shapes):
        rows_only = all(
            len(s) == len(ref_info.shape) and s[1:] == ref_info.shape[1:] for s in shapes
        )
        if rows_only and any(m in name for m in VOCAB_MARKERS) and ref_info.shape:
            job.shared_rows = min([ref_info.shape[0]] + [s[0] for s in shapes])
            job.reference = (reference, ref_stored)
        else:
            bad = next(i for i, s in enumerate(shapes) if s != ref_info.shape)
            raise L2SError(
                f"tensor {name!r}: shape {tuple(shapes[bad])} in {sources[bad][0].path} "
                f"but {tuple(ref_info.shape)} in {reference.path}"
            )
    return job


def plan_merge(config: MergeConfig) -> MergePlan:
    """Check the whole merge (method, parameters, inputs, tensor names and shapes) and plan it,
    without writing anything."""
    method = config.check_parameters()
    if not config.models:
        raise L2SError("no models to merge: pass at least one --model")
    if method.needs_base and config.base is None:
        raise L2SError(f"method {config.method!r} needs a base model: pass --base")
    check_device(config.options.device)

    given = config
    if config.base is not None and uses_base(method, True):
        config = drop_base_copies(config)
    left_out = [str(m.path) for m in given.models if m not in config.models]

    checkpoints: dict[Path, Checkpoint] = {}

    def open_(path: Path) -> Checkpoint:
        key = resolved(path)
        if key not in checkpoints:
            checkpoints[key] = Checkpoint(key, allow_pickle=config.options.allow_pickle)
        return checkpoints[key]

    models = [open_(p) for p in config.model_paths]
    base = open_(config.base) if config.base is not None else None
    source_path = resolved(config.config_source)
    inputs = {resolved(c.path) for c in models} | ({resolved(base.path)} if base else set())
    if config.tokenizer_from is not None and source_path not in inputs:
        raise L2SError(
            f"--tokenizer-from {config.tokenizer_from}: must be the base or one of the --model "
            "inputs (its vocabulary rows are taken into the output)"
        )
    reference = open_(source_path)
    used = models + ([base] if (base is not None and uses_base(method, True)) else [])

    tied_output = all(c.tie_word_embeddings for c in used + [reference])
    names = reference.names()
    if not tied_output:
        for head, embeds in TIED_HEADS.items():
            if head not in reference and any(e in reference for e in embeds):
                names.append(head)  # an untied input needs its own head in the output
    dtype = config.dtype or method.default_dtype
    out_dtype = DTYPE_NAMES[dtype] if dtype else _dominant_float_dtype(base or reference)

    wanted = set(names)
    for ckpt in used:
        for name in ckpt.tensors:
            if name not in wanted and not (tied_output and name in TIED_HEADS):
                raise L2SError(
                    f"{ckpt.path}: tensor {name!r} is not in {reference.path} "
                    "(the models do not share an architecture)"
                )

    jobs = [_plan_job(name, used, reference, out_dtype) for name in names]

    if method.elementwise or method.block_stats is not None:
        for job in jobs:
            block_rows = _block_rows(job.shape)
            if not job.copy_only and block_rows is not None:
                job.block_rows = block_rows

    device = torch.device(config.options.device)
    return MergePlan(
        config,
        method,
        checkpoints,
        models,
        base,
        reference,
        jobs,
        out_dtype,
        tied_output,
        _num_layers(reference),
        device,
        left_out=left_out,
    )


# float32 bytes per input above which an elementwise method runs on blocks of rows. Small:
# a block's float32 copies and temporaries then stay in the CPU's caches, and a merge touches
# less fresh memory (on a VM each first touch of a page can cost microseconds). 1 MB blocks
# against 16 MB: peak RSS 0.26 vs 0.50 GB on the 0.5B trio, time no worse
# (benchmarks/merge_speed.py); reused from the heap (see _keep_freed_memory).
BLOCK_BYTES = 1 << 20


def _keep_freed_memory() -> None:
    """Ask glibc to serve allocations up to 32 MB from the heap and keep freed memory for
    reuse. By default each large tensor is a fresh mmap whose pages the kernel must fault in
    and zero, which costs more than the merge arithmetic itself; a merge allocates and frees
    the same few sizes thousands of times. Peak memory is unchanged. No-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _block_rows(shape: tuple[int, ...]) -> int | None:
    if len(shape) < 2 or math.prod(shape) * 4 <= BLOCK_BYTES:
        return None
    return max(1, BLOCK_BYTES // (math.prod(shape[1:]) * 4))


# -- output folder ---------------------------------------------------------------------------

PROVENANCE = "l2smerge.json"


def merge_output_problem(out: Path) -> str | None:
    """Why `--force` must not replace `out`, or None when it is an earlier l2smerge merge
    output: a folder holding l2smerge.json and nothing l2smerge did not write there."""
    if not out.is_dir():
        return "is a file, not an l2smerge merge output"
    try:
        record = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"holds no readable {PROVENANCE}, so it is not an l2smerge merge output"
    if not isinstance(record, dict) or "l2smerge_version" not in record:
        return f"holds a {PROVENANCE} that l2smerge did not write"
    written = record.get("files")
    for entry in sorted(os.listdir(out)):
        if entry == PROVENANCE:
            continue
        if entry.startswith(".") or not (out / entry).is_file() or (out / entry).is_symlink():
            return f"holds {entry!r}, which no merge writes"
        if isinstance(written, list) and entry not in written:
            return f"holds {entry!r}, which the merge that made it did not write"
    return None


def check_output_path(out: Path, config: MergeConfig, *, force: bool) -> None:
    """OUT may be written: new, or (with --force) an earlier merge output that holds nothing
    else; never an input, a folder holding one, or the current folder."""
    out = resolved(out)
    model_calibration = [m.calibration for m in config.models]
    for p in [
        config.base,
        *config.model_paths,
        config.tokenizer_from,
        config.calibration,
        *model_calibration,
    ]:
        if p is None:
            continue
        p = resolved(p)
        if p == out or out in p.parents:
            raise L2SError(f"-o {out}: is (or holds) the input {p}; choose another output")
    cwd = resolved(Path.cwd())
    if cwd == out or out in cwd.parents:
        raise L2SError(f"-o {out}: is (or holds) the current folder; choose another output")
    check_replaceable(out, force=force)


def check_replaceable(out: Path, *, force: bool) -> None:
    """A folder may be written at `out`: nothing is there, or (with --force) an earlier
    l2smerge merge output (also used by `l2smerge export`)."""
    if not os.path.lexists(out):
        return
    if not force:
        raise L2SError(f"{out}: already exists; choose another -o or pass --force")
    problem = merge_output_problem(out)
    if problem:
        raise L2SError(
            f"{out}: --force only replaces an earlier l2smerge merge output, and this "
            f"{problem}; nothing was changed (move your files or choose another -o)"
        )


@contextlib.contextmanager
def atomic_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder `.OUT.partial-PID` beside `out`; it becomes `out` only if the
    block succeeds (util.atomic.replace_folder: with `force`, an earlier merge output at `out`
    is swapped out in the same step, then removed). The caller holds OUT's lock, so every
    partial folder already there was left by a killed merge and is removed."""
    out = resolved(out)
    with writing(out.parent, "cannot create"):
        out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.partial-"
    for stale in out.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f"{prefix}{os.getpid()}"
    with writing(tmp, "cannot create"):
        tmp.mkdir()
    try:
        yield tmp
        if os.path.lexists(out):
            problem = merge_output_problem(out)
            if not force or problem:
                raise L2SError(f"{out}: appeared while merging and {problem or 'exists'}")
        with writing(out, "cannot replace"):
            replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- the loop --------------------------------------------------------------------------------


def tensor_generator(seed: int, tensor_name: str) -> torch.Generator:
    """A CPU generator seeded from a stable hash of (seed, tensor name): the same merge gives
    the same random masks on every run, machine and device."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{seed}:{tensor_name}".encode()) + (seed << 32))
    return g


def _read_job(job: TensorJob) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if job.block_rows is not None:
        return [], None  # read block by block in _merge_blocks
    tensors = [ckpt.read(stored) for ckpt, stored in job.sources]
    ref = job.reference[0].read(job.reference[1]) if job.reference is not None else None
    return tensors, ref


def _extremes(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of t, NaN if it holds one; aminmax is ~20x faster than isfinite().all(),
    and on a float32 CPU block numpy's min and max twice as fast again (23 against 45 µs for
    1 MB on one thread)."""
    if not t.numel():
        return 0.0, 0.0
    if t.device.type == "cpu" and t.dtype == torch.float32:
        values = t.detach().numpy()
        return float(values.min()), float(values.max())
    low, high = torch.aminmax(t)
    return float(low), float(high)


def _finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in t."""
    low, high = _extremes(t)
    return math.isfinite(low) and math.isfinite(high)


def _non_finite_input(ckpt: Checkpoint, name: str) -> L2SError:
    return L2SError(f"{ckpt.path}: tensor {name!r} holds NaN or Inf values")


def _non_finite_result(name: str) -> L2SError:
    return L2SError(
        f"tensor {name!r}: the merge produced NaN/Inf (inputs are finite: the method "
        "overflowed float32; check its parameters)"
    )


def _overflow(low: float, high: float, dtype: torch.dtype) -> str | None:
    """Why finite values in [low, high] do not fit `dtype` (they would become inf), or None."""
    if not dtype.is_floating_point:
        return None
    limit = torch.finfo(dtype).max
    if low >= -limit and high <= limit:
        return None
    worst = high if high > limit else low
    return (
        f"values reach {worst:.4g}, beyond {dtype_name(dtype)}'s range (±{limit:.4g}), so "
        "they would be written as inf; choose --dtype bfloat16 or float32"
    )


def _check_reference_rows(job: TensorJob, rows: torch.Tensor, first_row: int) -> None:
    """Vocabulary rows only the --tokenizer-from input has are copied, not merged: they get
    the same checks as merged values (finite, and within the output dtype)."""
    assert job.reference is not None
    ckpt = job.reference[0]
    low, high = _extremes(rows)
    where = f"{ckpt.path}: tensor {job.name!r} (rows from {first_row}: vocabulary only it has)"
    if not (math.isfinite(low) and math.isfinite(high)):
        raise L2SError(f"{where} holds NaN or Inf values")
    problem = _overflow(low, high, job.dtype)
    if problem:
        raise L2SError(f"{where}: {problem}")


def _merge_one(
    plan: MergePlan,
    job: TensorJob,
    raw: list[torch.Tensor],
    ref: torch.Tensor | None,
    resolver: ParameterResolver,
    per_tensor: list[Callable[[str], dict[str, Any]]],
) -> torch.Tensor:
    config, method = plan.config, plan.method
    if job.copy_only:
        return raw[0]
    rows = job.shared_rows
    n_models = len(plan.models)
    inputs = []
    while raw:  # convert one by one, freeing each stored-dtype buffer once converted
        t = raw.pop(0)
        inputs.append((t[:rows] if rows is not None else t).to(plan.device, torch.float32))
        del t

    def check_inputs(inputs: list[torch.Tensor]) -> None:
        for (ckpt, _), t in zip(job.sources, inputs, strict=True):
            if not _finite(t):
                raise _non_finite_input(ckpt, job.name)

    linear = method.linear
    if not linear and not job.inputs_checked:  # TIES/DARE would silently drop a NaN entry
        check_inputs(inputs)
    tensors, base = inputs[:n_models], (inputs[n_models] if len(inputs) > n_models else None)
    kwargs = resolver.resolve(job.name)
    context = {"tensor_name": job.name, "importance": None}
    if "generator" in method.context:
        context["generator"] = tensor_generator(config.seed, job.name)
    for fn in per_tensor:
        extra = fn(job.name)
        for key, value in extra.items():
            (context if key in context or key == "generator" else kwargs)[key] = value
    for key, value in context.items():
        if key in method.context:
            kwargs[key] = value
    try:
        result = method.fn(tensors, base, **kwargs)
    except ValueError as exc:
        raise L2SError(f"tensor {job.name!r}: {config.method}: {exc}") from exc
    expected = tuple(tensors[0].shape)
    if tuple(result.shape) != expected:
        raise L2SError(
            f"tensor {job.name!r}: {config.method} returned shape {tuple(result.shape)}, "
            f"expected {expected}"
        )
    low, high = _extremes(result)
    if not (math.isfinite(low) and math.isfinite(high)):
        if linear:  # a non-finite input shows in a linear method's output: name its file
            check_inputs(inputs)
        raise _non_finite_result(job.name)
    problem = _overflow(low, high, job.dtype)
    if problem:
        raise L2SError(f"tensor {job.name!r}: the merged {problem}")
    del inputs, tensors, base, kwargs  # free the float32 inputs before the output cast
    result = result.to(dtype=job.dtype, device="cpu")
    if rows is not None:
        # Vocabulary rule: rows every input has are merged, the rest are the reference's.
        assert ref is not None
        _check_reference_rows(job, ref[rows:], rows)
        full = ref.to(job.dtype)
        full[:rows] = result
        return full
    return result


def _shared_rows(job: TensorJob) -> int:
    """Rows every input has (all of them unless the vocabulary rule applies)."""
    return job.shared_rows if job.shared_rows is not None else job.shape[0]


def _block_statistics(
    plan: MergePlan, job: TensorJob, resolver: ParameterResolver
) -> tuple[dict[str, Any], int, bool]:
    """The first pass of a method with `block_stats` (TIES thresholds) over a tensor merged in
    blocks: its whole-tensor statistics from the task vectors streamed in row blocks. Each
    task vector block is checked finite on the way (one pass over δ; a NaN or Inf in either
    input shows there), so the second pass need not check the inputs again when every
    model's task vector was read whole. Returns the statistics, the bytes read and whether
    every input was checked."""
    assert job.block_rows is not None and plan.method.block_stats is not None
    shared, rows_per_block = _shared_rows(job), job.block_rows
    n_models = len(plan.models)
    base_ckpt, base_name = job.sources[n_models]
    read_bytes = 0

    def task_vector_rows(k: int, start: int, stop: int) -> torch.Tensor:
        nonlocal read_bytes
        ckpt, stored = job.sources[k]
        model = ckpt.read_rows(stored, start, stop)
        base = base_ckpt.read_rows(base_name, start, stop)
        read_bytes += model.nbytes + base.nbytes
        delta = model.to(torch.float32).sub_(base.to(torch.float32))  # may reuse model's
        if not _finite(delta):
            for source, name in (job.sources[k], job.sources[n_models]):
                if not _finite(source.read_rows(name, start, stop).to(torch.float32)):
                    raise _non_finite_input(source, job.name)
            raise _non_finite_result(job.name)
        return delta

    read_whole: set[int] = set()  # models whose task vector was read to its last row

    def task_vector_blocks(k: int) -> Iterator[torch.Tensor]:
        for start in range(0, shared, rows_per_block):
            yield task_vector_rows(k, start, min(start + rows_per_block, shared))
        read_whole.add(k)

    numel = shared * math.prod(job.shape[1:])
    try:
        stats = plan.method.block_stats(
            task_vector_blocks,
            n_models,
            numel,
            task_vector_rows=task_vector_rows,
            rows=shared,
            **resolver.resolve(job.name),
        )
    except ValueError as exc:
        raise L2SError(f"tensor {job.name!r}: {plan.config.method}: {exc}") from exc
    return stats, read_bytes, len(read_whole) == n_models


def _merge_blocks(
    plan: MergePlan,
    job: TensorJob,
    writer: ShardedWriter,
    resolver: ParameterResolver,
    per_tensor: list[Callable[[str], dict[str, Any]]],
    pool: ThreadPoolExecutor,
    stats: dict[str, Any] | None = None,
    inputs_checked: bool = False,
) -> int:
    """An elementwise merge of a large tensor, one block of rows at a time (the next block is
    read while this one is computed): memory is a few blocks, not a few copies of the tensor.
    A method with `block_stats` (TIES) gets the whole-tensor `stats` of its first pass
    (_block_statistics) with every block. Returns the bytes read."""
    assert job.block_rows is not None
    out_rows = job.shape[0]
    shared = _shared_rows(job)
    block_job = dataclasses.replace(
        job, shared_rows=None, reference=None, inputs_checked=inputs_checked
    )
    blocks = [(a, min(a + job.block_rows, shared)) for a in range(0, shared, job.block_rows)]
    if job.reference is not None:  # vocabulary rule: the rows only the reference has
        blocks += [
            (a, min(a + job.block_rows, out_rows)) for a in range(shared, out_rows, job.block_rows)
        ]

    def read(block: tuple[int, int]) -> list[torch.Tensor]:
        start, stop = block
        sources = job.sources if start < shared else [job.reference]
        return [ckpt.read_rows(stored, start, stop) for ckpt, stored in sources]  # type: ignore[misc]

    read_bytes = 0
    if stats is not None:
        per_tensor = [*per_tensor, lambda _name: stats]
    pending = pool.submit(read, blocks[0])
    for i, (start, _) in enumerate(blocks):
        raw = pending.result()
        if i + 1 < len(blocks):
            pending = pool.submit(read, blocks[i + 1])
        read_bytes += sum(t.numel() * t.element_size() for t in raw)
        if start < shared:
            block_context = per_tensor
            if "block_offset" in plan.method.context:  # where this block sits in the tensor
                offset = start * math.prod(job.shape[1:])
                block_context = [*per_tensor, lambda _name, o=offset: {"block_offset": o}]
            writer.write(job.name, _merge_one(plan, block_job, raw, None, resolver, block_context))
        else:
            _check_reference_rows(job, raw[0], shared)
            writer.write(job.name, raw[0].to(job.dtype))
    return read_bytes


class StatisticsAhead:
    """Runs the first pass of a `block_stats` method (TIES thresholds) for the next tensor
    merged in blocks on a thread of its own, while this tensor is merged: the selection
    (numpy's partition, one core) and the second read of the inputs overlap the merge
    arithmetic. One first pass is in flight at a time (one extra |δ| buffer)."""

    def __init__(self, plan: MergePlan, resolver: ParameterResolver) -> None:
        self.plan, self.resolver = plan, resolver
        jobs = [
            i
            for i, job in enumerate(plan.jobs)
            if job.block_rows is not None and plan.method.block_stats is not None
        ]
        self._jobs = set(jobs)
        self._next = dict(zip(jobs, jobs[1:], strict=False))  # job -> the next one
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2smerge-stats") if jobs else None
        )
        self._pending: dict[int, Future] = {}
        self.busy = int(bool(jobs))  # threads it keeps busy

    def _submit(self, index: int) -> None:
        assert self._pool is not None
        job = self.plan.jobs[index]
        self._pending[index] = self._pool.submit(_block_statistics, self.plan, job, self.resolver)

    def get(self, index: int) -> tuple[dict[str, Any] | None, int, bool]:
        """Job `index`'s statistics, bytes read and whether its inputs were checked ((None, 0,
        False) if it has none); starts the next one's."""
        if index not in self._jobs:
            return None, 0, False
        if index not in self._pending:
            self._submit(index)
        if index in self._next:
            self._submit(self._next[index])
        return self._pending.pop(index).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]merging"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tensors"),
        TextColumn("{task.fields[gb]:.2f} GB read"),
        TextColumn("{task.fields[rate]:.2f} GB/s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _threads_for_blocks(plan: MergePlan, helpers: int) -> Iterator[None]:
    """For a method that merges in 1 MB blocks, torch's intra-op threads up to one core per
    core our own busy threads (read-ahead, TIES's first pass) leave free: an op on a block is
    too small for a team of threads to pay, and the team's spinning threads took the cores
    those helpers need (2 cores, OMP_NUM_THREADS=2 against 1: task arithmetic 2.72 s against
    2.46 s, TIES 5.24 s against 4.02 s on the 0.5B trio). Restored afterwards."""
    before = torch.get_num_threads()
    blocked = plan.method.elementwise or plan.method.block_stats is not None
    if blocked and plan.device.type == "cpu":
        torch.set_num_threads(max(1, min(before, _available_cores() - helpers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute(plan: MergePlan, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the tensor loop, writing shards into `out_dir`. Returns output facts."""
    config = plan.config
    resolver = ParameterResolver(config, plan.method, plan.num_layers)
    per_tensor: list[Callable[[str], dict[str, Any]]] = []
    if plan.method.prepare is not None:
        if not progress:  # calibration loads models: no transformers bars either (imported
            # only here: transformers costs ~0.7 s to import, a third of a small merge's time)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        per_tensor.append(plan.method.prepare(config, resolver, progress=progress))

    _keep_freed_memory()
    writer = ShardedWriter(
        out_dir,
        [PlannedTensor(j.name, j.shape, j.dtype) for j in plan.jobs],
        parse_size(config.options.max_shard_size),
    )
    read_bytes = 0
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2smerge-read")
    ahead = StatisticsAhead(plan, resolver)
    try:
        with _progress(progress) as bar, _threads_for_blocks(plan, 1 + ahead.busy):
            task = bar.add_task("merge", total=len(plan.jobs), gb=0.0, rate=0.0)
            pending: Future | None = pool.submit(_read_job, plan.jobs[0]) if plan.jobs else None
            for i, job in enumerate(plan.jobs):
                assert pending is not None
                raw, ref = pending.result()
                # Read ahead: the next tensor's bytes arrive while this one is computed.
                pending = (
                    pool.submit(_read_job, plan.jobs[i + 1]) if i + 1 < len(plan.jobs) else None
                )
                if job.block_rows is not None:
                    stats, stats_bytes, checked = ahead.get(i)
                    read_bytes += stats_bytes
                    read_bytes += _merge_blocks(
                        plan, job, writer, resolver, per_tensor, pool, stats, checked
                    )
                else:
                    read_bytes += sum(t.numel() * t.element_size() for t in raw)
                    merged = _merge_one(plan, job, raw, ref, resolver, per_tensor)
                    del raw, ref
                    writer.write(job.name, merged)
                    del merged
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, gb=read_bytes / 1e9, rate=read_bytes / 1e9 / elapsed)
        files = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        ahead.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return {
        "num_tensors": len(plan.jobs),
        "num_shards": len(files),
        "dtype": dtype_name(plan.out_dtype),
        "total_bytes": writer.total_size,
        "tie_word_embeddings": plan.tied_output,
        "seconds": round(time.perf_counter() - start, 3),
        "left_out_models": plan.left_out,  # --model inputs that are the base (zero task vector)
    }


def _write_config(plan: MergePlan, out_dir: Path) -> None:

    config = dict(plan.reference.config)
    name = dtype_name(plan.out_dtype)
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = name
    if "dtype" not in config and "torch_dtype" not in config:
        config["dtype"] = name
    config["tie_word_embeddings"] = plan.tied_output
    if isinstance(config.get("text_config"), dict):
        config["text_config"] = {**config["text_config"], "tie_word_embeddings": plan.tied_output}
    write_json_atomic(out_dir / "config.json", config)


def resolved_parameters(plan: MergePlan) -> dict[str, Any]:
    """Every parameter of the method: the config's spec where given, else the default."""
    return {
        name: plan.config.parameters.get(name, default)
        for name, default in plan.method.params.items()
    }


@holds_lock("out", beside=True)
def run_merge(
    config: MergeConfig, out: Path, *, progress: bool = True, force: bool = False
) -> Path:
    """Merge as `config` says into the model folder `out` (atomically, one merge per OUT at
    a time). Returns `out`."""
    out = resolved(out)
    config = config.relative_to(Path.cwd())
    check_output_path(out, config, force=force)
    plan = plan_merge(config)
    fingerprints = Fingerprinter({str(c.path): c.files for c in plan.checkpoints.values()}).start()
    with atomic_output(out, force=force) as tmp:
        output = execute(plan, tmp, progress=progress)
        with writing(tmp / "config.json"):
            _write_config(plan, tmp)
        copy_side_files(plan.reference.path, tmp)
        with writing(tmp / PROVENANCE):
            write_provenance(
                tmp,
                config,  # the recipe as given: rerun, it leaves out the same models again
                parameters=resolved_parameters(plan),
                fingerprints=fingerprints.join(),
                output=output,
            )
    return out

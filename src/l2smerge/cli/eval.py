"""`l2smerge eval`: accuracy, length and reflection of a model on the reasoning benchmarks;
key-point coverage on free-form tasks (--task, docs/tasks.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from l2smerge.cli import app


@app.command("eval")
def eval_command(
    model: str = typer.Argument(
        ...,
        help="Model directory or hub name; with --backend openai the served model name; "
        "with --backend replay only a label.",
    ),
    bench: str = typer.Option(
        None,
        "--bench",
        "-b",
        help="Comma-separated: gsm8k,math500,minerva_math,olympiadbench,"
        "college_math,aime24,amc23,lab; all = the seven math sets. With replay, default: every "
        "bench in --responses.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run directory (results.jsonl, summary.json); rerunning into it resumes.",
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Folder with BENCH/test.jsonl [default: $L2SMERGE_DATA_DIR]"
    ),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm | openai | replay"),
    responses: Path = typer.Option(
        None, "--responses", help="Replay: JSONL of bench, id, response."
    ),
    tokenizer: str = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer to count tokens (and render prompts) with [default: the model's].",
    ),
    max_tokens: int = typer.Option(
        None,
        "--max-tokens",
        help="New-token limit, capped at the model's context [default: 10240, the study's for "
        "System 2 and merges; 8192 with --prompt fewshot, its limit for System 1].",
    ),
    limit: int = typer.Option(None, "--limit", help="Only the first N items of each bench."),
    prompt: str = typer.Option(
        "auto",
        "--prompt",
        help="qwen25-math-cot (the study's raw prompt, the same bytes for every model) | chat "
        "(the tokenizer's chat template) | fewshot (System 1) | FILE (plain text with "
        "{question}) | auto: each benchmark's default (qwen25-math-cot; chat for lab). "
        "cot = qwen25-math-cot.",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="hf: prompts per batch [default: 8 on CPU, 32 on GPU]."
    ),
    device: str = typer.Option(
        None, "--device", help="hf: cpu, cuda, cuda:1 ... [default: cuda if available]."
    ),
    dtype: str = typer.Option(
        None,
        "--dtype",
        help="hf/vllm: auto, bfloat16, float16, float32 [default: auto on GPU, float32 on CPU].",
    ),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="vllm: GPUs."),
    base_url: str = typer.Option(
        None,
        "--base-url",
        help="openai: e.g. http://127.0.0.1:8000/v1 [default: $OPENAI_BASE_URL].",
    ),
    api: str = typer.Option(
        "auto",
        "--api",
        help="openai: auto (raw prompts to /v1/completions, chat to /v1/chat/completions) | "
        "chat | completions.",
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY",
        "--api-key-env",
        help="openai: the environment variable holding the API key.",
    ),
    concurrency: int = typer.Option(8, "--concurrency", help="openai: requests in flight."),
    timeout: float = typer.Option(600.0, "--timeout", help="openai: seconds per request."),
    retries: int = typer.Option(
        5, "--retries", help="openai: retries on 429/5xx/network errors, with exponential backoff."
    ),
    task: list[Path] = typer.Option(
        None,
        "--task",
        "-t",
        help="A free-form task file (JSONL of id, prompt|messages, key_points; docs/tasks.md); "
        "repeat for several. Beside or instead of --bench.",
    ),
    judge: str = typer.Option("lexical", "--judge", help="Coverage judge: lexical | llm."),
    judge_url: str = typer.Option(
        None, "--judge-url", help="llm judge: OpenAI-compatible endpoint, e.g. http://host/v1."
    ),
    judge_model: str = typer.Option(None, "--judge-model", help="llm judge: the model name."),
    judge_api_key_env: str = typer.Option(
        "L2SMERGE_JUDGE_API_KEY",
        "--judge-api-key-env",
        help="llm judge: the environment variable holding its API key.",
    ),
    judge_concurrency: int = typer.Option(
        4, "--judge-concurrency", help="llm judge: requests in flight."
    ),
    judge_max_tokens: int = typer.Option(
        2048, "--judge-max-tokens", help="llm judge: token limit of a verdict."
    ),
    judge_max_chars: int = typer.Option(
        100_000, "--judge-max-chars", help="llm judge: longer responses get a judge error."
    ),
    judge_repairs: int = typer.Option(
        2, "--judge-repairs", help="llm judge: malformed answers sent back before a judge error."
    ),
    judge_retries: int = typer.Option(
        5, "--judge-retries", help="llm judge: retries on 429/5xx/network errors."
    ),
    judge_cache: Path = typer.Option(
        None,
        "--judge-cache",
        help="llm judge: verdict cache folder [default: $L2SMERGE_CACHE_DIR/judge].",
    ),
    sampling: str = typer.Option(
        "greedy",
        "--sampling",
        help="greedy (the study's) | r1: temperature 0.6, top-p 0.95, DeepSeek's recommendation "
        "for R1 and R1-Distill; --temperature/--top-p/--seed/--samples override it.",
    ),
    temperature: float = typer.Option(
        None, "--temperature", help="Sample at this temperature (0: greedy) [default: greedy]."
    ),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling: keep top-p mass."),
    seed: int = typer.Option(
        None, "--seed", help="Seed of a sampled run; each item and sample draws its own [0]."
    ),
    samples: int = typer.Option(
        None,
        "--samples",
        "-n",
        help="Responses per item when sampling: accuracy is avg@n, with pass@n [default: 1].",
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="hf/vllm: accept *.bin checkpoints (pickle)."
    ),
    log_prompts: bool = typer.Option(
        False, "--log-prompts", help="Also write each item's rendered prompt to prompts.jsonl."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress, notes or table: only errors and the paths."
    ),
) -> None:
    """Evaluate MODEL on reasoning benchmarks (accuracy, response length, reflection) and on
    free-form tasks (key-point coverage)."""
    from l2smerge.eval import evaluate
    from l2smerge.eval.sampling import resolve_sampling
    from l2smerge.eval.table import summary_table, table_console

    settings = resolve_sampling(
        sampling, temperature=temperature, top_p=top_p, seed=seed, samples=samples
    )

    backend_opts: dict[str, object] = {}
    if backend in ("hf", "vllm") and dtype:
        backend_opts["dtype"] = dtype
    if backend == "vllm":
        backend_opts["tensor_parallel_size"] = tensor_parallel_size
    if backend == "openai":
        backend_opts.update(
            base_url=base_url,
            api=api,
            api_key_env=api_key_env,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
        )
    judge_options = None
    if judge == "llm":
        judge_options = dict(
            url=judge_url,
            model=judge_model,
            api_key_env=judge_api_key_env,
            concurrency=judge_concurrency,
            max_tokens=judge_max_tokens,
            max_chars=judge_max_chars,
            malformed_retries=judge_repairs,
            retries=judge_retries,
            cache_dir=judge_cache,
        )
    summary = evaluate(
        model,
        bench,
        out_dir=out,
        backend=backend,
        data_dir=data_dir,
        max_tokens=max_tokens,
        limit=limit,
        prompt=prompt,
        batch_size=batch_size,
        responses=responses,
        tokenizer=tokenizer,
        device=device,
        progress=progress and not quiet,
        quiet=quiet,
        allow_pickle=allow_pickle,
        log_prompts=log_prompts,
        tasks=task or None,
        judge=judge,
        judge_options=judge_options,
        sampling=settings,
        **backend_opts,
    )
    console = table_console()
    if not quiet:
        decoding = "" if settings.greedy else f" ({settings.describe()})"
        console.print(summary["model"] + decoding, markup=False, highlight=False)
        console.print(summary_table(summary))
        if "coverage_average" in summary:
            from l2smerge.eval.freeform import coverage_table

            console.print(coverage_table(summary))
    ungradable = summary.get("average", {}).get("ungradable") or 0
    if ungradable:
        console.print(
            f"note: {ungradable} response(s) could not be graded (over the grader's time or "
            "size limits) and count as wrong; results.jsonl says why under `ungradable`",
            markup=False,
            highlight=False,
        )
    console.print(
        f"results: {out / 'results.jsonl'}  summary: {out / 'summary.json'}",
        markup=False,
        highlight=False,
    )

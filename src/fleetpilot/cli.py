"""The ``fleetpilot`` command.  It parses flags and wires parts together; nothing else.

Engines are imported inside each command so ``fleetpilot --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

T = TypeVar("T")

app = typer.Typer(
    help="Cost- and latency-aware orchestration for production LLM inference.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def emulate(
    model: Annotated[str, typer.Option(help="model name (a catalogue profile)")] = "llama-3.1-8b",
    accelerator: Annotated[str, typer.Option(help="accelerator (a catalogue profile)")] = "A10G",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9001,
    time_scale: Annotated[
        float, typer.Option(help="real seconds per modelled second (0.1 = 10x faster)")
    ] = 1.0,
    catalogue: Annotated[Path | None, typer.Option(help="catalogue YAML")] = None,
    fault: Annotated[
        str, typer.Option(help="none | refuse | error500 | hang | die_after | slow")
    ] = "none",
    die_after_tokens: Annotated[int, typer.Option(help="with --fault die_after")] = 0,
    slowdown: Annotated[float, typer.Option(help="with --fault slow: step-time factor")] = 1.0,
) -> None:
    """Run an OpenAI-compatible replica that executes the perf model in real time."""
    from fleetpilot.emulator.server import EmulatorOptions, run_emulator

    _guard(
        run_emulator,
        EmulatorOptions(
            model=model,
            accelerator=accelerator,
            host=host,
            port=port,
            time_scale=time_scale,
            catalogue=catalogue,
            fault=fault,
            die_after_tokens=die_after_tokens,
            slowdown=slowdown,
        ),
    )


@app.command()
def gateway(
    fleet: Annotated[Path, typer.Option(help="fleet YAML: pools and replica URLs")],
    host: Annotated[str | None, typer.Option(help="override gateway.host")] = None,
    port: Annotated[int | None, typer.Option(help="override gateway.port")] = None,
    router: Annotated[str | None, typer.Option(help="override gateway.router")] = None,
    catalogue: Annotated[Path | None, typer.Option(help="catalogue YAML")] = None,
) -> None:
    """Serve the OpenAI-compatible gateway in front of a fleet."""
    from fleetpilot.gateway.server import run_gateway

    _guard(run_gateway, fleet, host=host, port=port, router=router, catalogue=catalogue)


@app.command("hash-key")
def hash_key(
    key: Annotated[
        str | None, typer.Argument(help="the API key (read from stdin when left out)")
    ] = None,
) -> None:
    """Print the digest of a client API key, to list under ``gateway.client_keys``."""
    import sys

    from fleetpilot.gateway.auth import hash_key as digest

    value = key if key is not None else sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise typer.BadParameter("the key is empty")
    print(digest(value))


@app.command()
def spend(
    store: Annotated[
        str | None, typer.Option(help="store URL (sqlite:///FILE or redis://HOST:PORT/DB)")
    ] = None,
    fleet: Annotated[Path | None, typer.Option(help="fleet YAML whose store: to read")] = None,
    by: Annotated[str, typer.Option(help="group by: tenant,key,model,pool,class,day")] = "tenant",
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    since: Annotated[str | None, typer.Option(help="Unix time or ISO date")] = None,
    until: Annotated[str | None, typer.Option(help="Unix time or ISO date")] = None,
    format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Report the spend ledger: settled requests, tokens and $ per group."""
    from fleetpilot.tenancy.ledger import run_report

    text = _guard(
        run_report, store=store, fleet=fleet, by=by, tenant=tenant, since=since, until=until,
        fmt=format,
    )  # fmt: skip
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        out.write_text(text)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds of compressed trace per policy")] = 60.0,
    policies: Annotated[
        str, typer.Option(help="comma-separated routing policies to compare")
    ] = "cost_slo,round_robin,least_load,power_of_two",
    seed: Annotated[int, typer.Option()] = 7,
    parts: Annotated[
        str, typer.Option(help="comma-separated parts: routing,controller,tenants,guard,rag")
    ] = "routing,controller,tenants,guard,rag",
    engine: Annotated[
        str, typer.Option(help="llama.cpp: also run part 1 on two real llama.cpp replicas")
    ] = "emulator",
) -> None:
    """Emulated fleet + gateway + load generator: a table per routing policy, then the
    controller, tenants, guard and retrieval parts."""
    from fleetpilot.demo import run_demo

    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    code = run_demo(
        duration=duration, policies=policies.split(","), seed=seed, parts=chosen, engine=engine
    )
    raise typer.Exit(code)


@app.command()
def profile(
    url: Annotated[str, typer.Option(help="the engine's base URL (OpenAI-compatible)")],
    model: Annotated[str, typer.Option(help="the model name it serves")],
    accelerator: Annotated[
        str, typer.Option(help="what to call its hardware in the profile")
    ] = "cpu",
    out: Annotated[Path | None, typer.Option(help="write the YAML here, not stdout")] = None,
    prompts: Annotated[
        str, typer.Option(help="prompt lengths (words) of the prefill sweep")
    ] = "64,128,256,512,1024",
    batches: Annotated[str, typer.Option(help="batch sizes of the decode sweep")] = "1,2,4,8,16",
    repeats: Annotated[int, typer.Option(min=1, help="requests per prompt length")] = 3,
    decode_tokens: Annotated[int, typer.Option(min=4, help="tokens per decode stream")] = 48,
    api_key: Annotated[str | None, typer.Option(envvar="FLEETPILOT_ENGINE_KEY")] = None,
) -> None:
    """Measure a running engine: prefill rate, decode step per batch, admission limit."""
    import asyncio

    from rich.console import Console
    from rich.progress import Progress

    from fleetpilot.profiling import Profiler, profile_yaml

    sizes = _guard(_ints, prompts, "prompts")
    widths = _guard(_ints, batches, "batches")
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("profiling", total=1.0)

        def progress(what: str, share: float) -> None:
            bar.update(task, description=what, completed=share)

        profiler = Profiler(url, model, api_key=api_key, progress=progress)
        measured = _guard(
            asyncio.run,
            profiler.measure(
                accelerator, prompts=sizes, batches=widths, repeats=repeats,
                decode_tokens=decode_tokens,
            ),
        )  # fmt: skip
    text = profile_yaml(measured)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        console.print(f"profile written to {out}")


def _ints(text: str, what: str) -> list[int]:
    from fleetpilot.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated whole numbers, not {text!r}") from None
    if not values or min(values) < 1 or values != sorted(set(values)):
        raise ConfigError(f"--{what} must be increasing positive numbers, not {text!r}")
    return values


def _knobs(pairs: list[str]) -> dict[str, float]:
    """``KNOB=VALUE`` options for ``PlanParams.with_knobs``, each name and value checked."""
    from fleetpilot.core.capacity import check_knobs
    from fleetpilot.errors import ConfigError

    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected KNOB=VALUE with a number")
    try:
        check_knobs(out)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return out


@app.command()
def simulate(
    trace: Annotated[
        str | None, typer.Option(help="trace file or name (azure-conv, servegen-m-large, …)")
    ] = None,
    hours: Annotated[float, typer.Option(help="length of the synthetic default trace")] = 4.0,
    policy: Annotated[
        str | None, typer.Option(help="comma-separated capacity policies (default: all)")
    ] = None,
    mode: Annotated[str, typer.Option(help="auto | request | window")] = "auto",
    model: Annotated[str, typer.Option()] = "llama-3.1-8b",
    accelerators: Annotated[str, typer.Option(help="comma-separated; default: all")] = "",
    classes: Annotated[str, typer.Option(help="capacity classes")] = "on_demand,spot",
    spot: Annotated[
        list[Path] | None,
        typer.Option(help="spot map YAML (which trace describes which pool); repeatable"),
    ] = None,
    ttft_slo: Annotated[float, typer.Option(help="TTFT target, seconds")] = 2.0,
    time_scale: Annotated[float, typer.Option(help="stretch trace time by this factor")] = 1.0,
    rate_scale: Annotated[float, typer.Option(help="multiply the request rate")] = 1.0,
    window: Annotated[float, typer.Option(help="window length, seconds")] = 600.0,
    control_s: Annotated[
        float | None,
        typer.Option(help="window level: step the policies every N s (must divide the window)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="first N requests of a request trace")] = None,
    catalogue: Annotated[Path | None, typer.Option(help="catalogue YAML (the fleet)")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("fleetpilot-out"),
    agreement: Annotated[
        bool, typer.Option(help="also run the window mode on a request trace and compare")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KNOB=VALUE", help="planner knob, e.g. surge_min=1.8 (repeatable)"
        ),
    ] = None,
) -> None:
    """Replay a trace through capacity policies; cost and tail latency per policy."""
    from rich.console import Console
    from rich.progress import Progress

    from fleetpilot.core.model import CapacityClass
    from fleetpilot.sim.report import comparison_table
    from fleetpilot.sim.run import SimOptions, run_simulation

    opts = SimOptions(
        trace=trace,
        catalogue=catalogue,
        model=model,
        accelerators=tuple(a for a in accelerators.split(",") if a),
        classes=tuple(CapacityClass(c) for c in classes.split(",") if c),
        policies=tuple(p for p in (policy or "").split(",") if p),
        synthetic_hours=hours,
        mode=mode,
        spot=tuple(spot or ()),
        ttft_slo_s=ttft_slo,
        time_scale=time_scale,
        rate_scale=rate_scale,
        window_s=window,
        control_s=control_s,
        limit=limit,
        seed=seed,
        out=out,
        check_agreement=agreement,
        knobs=_guard(_knobs, set_ or []),
    )
    console = Console(width=max(Console().width, 170))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("simulating", total=None)

        def progress(name: str) -> None:
            bar.update(task, description=f"simulating {name}")

        outcome = _guard(run_simulation, opts, progress)
    console.print(
        comparison_table(outcome.runs, outcome.optimum_cost, outcome.title, outcome.hedged_cost)
    )
    console.print(f"report: {outcome.report}")


@app.command()
def controller(
    config: Annotated[Path, typer.Option(help="controller YAML (policy, actuator, gateway)")],
) -> None:
    """Run the capacity controller: observe, forecast, plan, actuate, every few seconds."""
    from fleetpilot.controller.service import run_controller

    _guard(run_controller, config)


@app.command()
def advise(
    trace: Annotated[
        str, typer.Option(help="weeks of history: a rate series or request trace (file or name)")
    ] = "servegen-m-large",
    model: Annotated[str, typer.Option()] = "llama-3.1-8b",
    accelerators: Annotated[str, typer.Option(help="comma-separated; default: all")] = "",
    window: Annotated[float, typer.Option(help="window of a request trace, seconds")] = 600.0,
    ttft_slo: Annotated[float, typer.Option()] = 2.0,
    catalogue: Annotated[Path | None, typer.Option(help="catalogue YAML")] = None,
) -> None:
    """How many reserved replicas to commit to, and what that saves."""
    from rich.console import Console

    from fleetpilot.advise import print_advice, run_advice

    advice = _guard(
        run_advice, trace, model=model, accelerators=[a for a in accelerators.split(",") if a],
        window_s=window, ttft_slo_s=ttft_slo, catalogue=catalogue,
    )  # fmt: skip
    print_advice(advice, Console(width=max(Console().width, 140)))


guard_app = typer.Typer(
    help="Guardrails: prompt injection, jailbreaks, personal data and secrets.",
    no_args_is_help=True,
)
app.add_typer(guard_app, name="guard")

_MODEL = Annotated[
    Path | None, typer.Option(help="a model file from `fleetpilot guard train` (default: shipped)")
]


@guard_app.command("check")
def guard_check(
    text: Annotated[str, typer.Argument(help="the text to check ('-' reads stdin)")],
    model: _MODEL = None,
    json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Verdict, score, the layer that decided, and the text with personal data redacted;
    exit status 1 for an attack."""
    import sys

    from rich.console import Console

    from fleetpilot.guard.commands import run_check

    body = sys.stdin.read() if text == "-" else text
    raise typer.Exit(1 if _guard(run_check, body, model, json, Console()) else 0)


@guard_app.command("eval")
def guard_eval(
    data: Annotated[
        Path | None,
        typer.Option(help="the guard data folder (default: $FLEETPILOT_DATA/guard) or one file"),
    ] = None,
    model: _MODEL = None,
    side: Annotated[str, typer.Option(help="test (never trained on) | train | all")] = "test",
) -> None:
    """Per set: true- and false-positive rates, F1, ROC-AUC and latency, beside length alone."""
    from rich.console import Console

    from fleetpilot.guard.commands import run_eval

    if side not in ("test", "train", "all"):
        raise typer.BadParameter("--side is test, train or all")
    _guard(run_eval, data, model, side, Console(width=max(Console().width, 150)))


@guard_app.command("train")
def guard_train(
    data: Annotated[
        Path | None, typer.Option(help="the guard data folder (default: $FLEETPILOT_DATA/guard)")
    ] = None,
    out: Annotated[Path, typer.Option(help="where to write the model")] = Path("guard-model.npz"),
    seed: Annotated[int, typer.Option(help="the family split's and the folds' seed")] = 20261201,
) -> None:
    """Train the linear layer on the training side of the family split (reproducible)."""
    from rich.console import Console

    from fleetpilot.guard.commands import run_train

    _guard(run_train, data, out, seed, Console())


rag_app = typer.Typer(
    help="The RAG data layer: ingest documents, search them, keep the index fresh.",
    no_args_is_help=True,
)
app.add_typer(rag_app, name="rag")

_STORE = Annotated[
    str,
    typer.Option(
        "--store",
        help="sqlite file or postgresql:// URL"
        " (default: $FLEETPILOT_RAG_STORE or ./fleetpilot-rag.db)",
    ),
]
_TENANT = Annotated[str, typer.Option(help="whose documents these are")]
_EMBEDDER = Annotated[
    str | None,
    typer.Option(
        help="wordllama | e5 | openai:MODEL@BASE_URL (default: the store's, else wordllama)"
    ),
]
_STRATEGY = Annotated[str, typer.Option("--chunker", help="fixed | recursive | semantic")]
_SIZE = Annotated[int, typer.Option(help="chunk size in tokens")]


def _default_store() -> str:
    from fleetpilot.rag.commands import DEFAULT_STORE

    return DEFAULT_STORE


@rag_app.command("ingest")
def rag_ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or directories")],
    store: _STORE = "",
    tenant: _TENANT = "default",
    embedder: _EMBEDDER = None,
    strategy: _STRATEGY = "recursive",
    size: _SIZE = 128,
    tag: Annotated[
        list[str] | None, typer.Option(help="a tag for every document (repeatable)")
    ] = None,
) -> None:
    """Index text, Markdown, HTML and PDF files; only what changed is embedded again, and
    documents whose files are gone are deleted.  Exit status 1 if a file was skipped."""
    from rich.console import Console

    from fleetpilot.rag.commands import run_ingest

    skipped = _guard(
        run_ingest, paths, store_url=store or _default_store(), tenant=tenant,
        embedder_spec=embedder, strategy=strategy, size=size, tags=tuple(tag or ()),
        console=Console(),
    )  # fmt: skip
    raise typer.Exit(1 if skipped else 0)


@rag_app.command("search")
def rag_search(
    query: Annotated[str, typer.Argument()],
    store: _STORE = "",
    tenant: _TENANT = "default",
    k: Annotated[int, typer.Option("-k", "--k", help="how many chunks")] = 10,
    mode: Annotated[str, typer.Option(help="hybrid | vector | keyword")] = "hybrid",
    filters: Annotated[
        str | None, typer.Option(help='JSON, e.g. \'{"tag": "faq", "meta": {"lang": "en"}}\'')
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="JSON rows")] = False,
) -> None:
    """The top chunks for a query, with their documents and character spans."""
    from rich.console import Console

    from fleetpilot.rag.commands import run_search

    _guard(
        run_search, query, store_url=store or _default_store(), tenant=tenant, k=k, mode=mode,
        filters=filters, as_json=json, console=Console(width=max(Console().width, 140)),
    )  # fmt: skip


@rag_app.command("status")
def rag_status(
    store: _STORE = "",
    prometheus: Annotated[bool, typer.Option(help="Prometheus text instead of a table")] = False,
) -> None:
    """Documents, chunks, models, and what changed on disk but is not indexed yet."""
    from rich.console import Console

    from fleetpilot.rag.commands import run_status

    url = store or _default_store()
    _guard(run_status, store_url=url, prometheus=prometheus, console=Console())


@rag_app.command("watch")
def rag_watch(
    root: Annotated[Path, typer.Argument(help="the directory to keep indexed")],
    store: _STORE = "",
    tenant: _TENANT = "default",
    embedder: _EMBEDDER = None,
    strategy: _STRATEGY = "recursive",
    size: _SIZE = 128,
    interval: Annotated[float, typer.Option(help="seconds between scans")] = 1.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve freshness gauges on 127.0.0.1:PORT/metrics")
    ] = None,
) -> None:
    """Keep a directory's index fresh: ingest now, then on every change."""
    from rich.console import Console

    from fleetpilot.rag.commands import run_watch

    _guard(
        run_watch, root, store_url=store or _default_store(), tenant=tenant,
        embedder_spec=embedder, strategy=strategy, size=size, interval_s=interval,
        metrics_port=metrics_port, console=Console(),
    )  # fmt: skip


@rag_app.command("reembed")
def rag_reembed(
    embedder: Annotated[str, typer.Argument(help="wordllama | e5 | openai:MODEL@BASE_URL")],
    store: _STORE = "",
    batch: Annotated[int, typer.Option(help="chunks per embedding call")] = 256,
) -> None:
    """Move the store to another embedding model; searches keep using the old one until
    every chunk has a new vector, then switch at once."""
    from rich.console import Console

    from fleetpilot.rag.commands import run_reembed

    _guard(run_reembed, store_url=store or _default_store(), embedder_spec=embedder, batch=batch,
           console=Console())  # fmt: skip


def _guard(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run an engine; a configuration error becomes one line on stderr and exit status 2."""
    from fleetpilot.errors import FleetpilotError

    try:
        return fn(*args, **kwargs)
    except FleetpilotError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()

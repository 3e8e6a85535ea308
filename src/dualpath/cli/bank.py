"""`dualpath bank build | info | search | add`: make, inspect and query a concept bank."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dualpath.cli.common import (
    BACKEND_OPTION,
    CONFIG_OPTION,
    DEVICE_OPTION,
    MILVUS_URI_OPTION,
    check_text,
    load_config,
    make_console,
    print_json,
)
from dualpath.config import MAX_SEARCH_K

bank_app = typer.Typer(help="Build, inspect and search a concept bank.", no_args_is_help=True)
console = make_console()

SOURCE_HELP = (
    "A .jsonl file ({id, title, text, domain?} per line), a folder of .txt/.md files, "
    "wiki-sample (short Wikipedia leads) or python-docs (long sections of Python's own documentation)."
)

PROCESSES_OPTION = typer.Option(
    None, "--processes", help="Encoding worker processes: auto (one per core on the CPU, up to 4) or a number; 1 = "
    "encode in this process.",
)


def register(app: typer.Typer) -> None:
    app.add_typer(bank_app, name="bank")


@bank_app.command("build")
def build_command(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Bank directory to write (must not be a bank unless --force)."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder name or local sentence-transformers path."),
    index: str | None = typer.Option(
        None, "--index", help="auto | flat | ivf | hnsw | a FAISS factory string (faiss) or Milvus index type (milvus)."
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="Stored vector precision: float16 | float32."),
    limit_docs: int | None = typer.Option(
        None, "--limit-docs", min=1,
        help="Use only the first N documents, in source order (wiki-sample is grouped by topic).",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed lines/files instead of stopping."),
    backend: str | None = BACKEND_OPTION,
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    force: bool = typer.Option(
        False, "--force", help="Replace a bank already at --out (its models/ and calibration.json are dropped)."
    ),
    device: str | None = DEVICE_OPTION,
    processes: str | None = PROCESSES_OPTION,
) -> None:
    """Segment a corpus into concepts, encode them and index them into a new bank."""
    from dualpath.bank import ConceptBank

    cfg = load_config(
        config,
        device=device,
        encoder={"name": encoder, "processes": processes},
        bank={"index": index, "dtype": dtype, "backend": backend, "milvus_uri": milvus_uri},
    )
    started = time.perf_counter()
    bank = ConceptBank.build(source, out, cfg, skip_bad=skip_bad, limit_docs=limit_docs, force=force)
    seconds = time.perf_counter() - started
    summary = {**_summary(bank), "seconds": round(seconds, 2), "concepts_per_s": round(len(bank) / seconds, 1)}
    bank.close()
    if as_json:
        print_json(summary)
        return
    console.print(
        f"built [bold]{out}[/]: {summary['concepts']} concepts from {summary['documents']} documents "
        f"in {seconds:.1f} s ({summary['concepts_per_s']:.0f} concepts/s), index {summary['index']}",
        highlight=False,
    )


@bank_app.command("add")
def add_command(
    bank_dir: Path = typer.Argument(..., metavar="DIR", help="Bank directory."),
    source: str = typer.Argument(..., help=SOURCE_HELP),
    limit_docs: int | None = typer.Option(
        None, "--limit-docs", min=1,
        help="Use only the first N documents, in source order (wiki-sample is grouped by topic).",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed lines/files instead of stopping."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str | None = DEVICE_OPTION,
    processes: str | None = PROCESSES_OPTION,
) -> None:
    """Append documents to a bank without re-encoding it (atomic: the old bank stays until the new one is whole)."""
    from dualpath.bank import ConceptBank

    cfg = load_config(config, device=device, bank={"milvus_uri": milvus_uri}, encoder={"processes": processes})
    with ConceptBank.open(bank_dir, cfg) as bank:
        added = bank.add(source, skip_bad=skip_bad, limit_docs=limit_docs)
        summary = {**_summary(bank), "added": added}
    if as_json:
        print_json(summary)
        return
    console.print(f"added {added} concepts to [bold]{bank_dir}[/] (now {summary['concepts']})", highlight=False)


@bank_app.command("tune")
def tune_command(
    bank_dir: Path = typer.Argument(..., metavar="DIR", help="Bank directory."),
    recall: float | None = typer.Option(
        None, "--recall", min=0.01, max=1.0,
        help="The share of the exact top-k every search must return (default: bank.recall, 0.95).",
    ),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
) -> None:
    """Measure an IVF or HNSW bank's search settings (nprobe / efSearch per depth) for a stated recall."""
    from dualpath.bank import ConceptBank
    from dualpath.errors import DualPathError

    overrides: dict[str, Any] = {"milvus_uri": milvus_uri}
    if recall is not None:
        overrides["recall"] = recall
    cfg = load_config(config, bank=overrides)
    if cfg.bank.recall is None:
        raise DualPathError("bank.recall is null in the config: give --recall to state one")
    with ConceptBank.open(bank_dir, cfg) as bank:
        tuned = bank.tune()
        index = bank.index_spec
    if as_json:
        print_json({"path": str(bank_dir), "index": index, "search": tuned})
        return
    if tuned is None:
        console.print(f"{bank_dir}: index {index} has no search settings to tune (an exact index, or a Milvus "
                      "type without an nprobe or ef)", highlight=False)
        return
    console.print(f"{bank_dir} ({index}) tuned to recall {tuned['recall']:.2f}: {_tuned_settings(tuned)}",
                  highlight=False)


def _tuned_settings(tuned: dict[str, Any]) -> str:
    """A manifest's tuned search settings in a line: per depth, and within a domain where it has them."""
    def per_depth(t: dict[str, Any]) -> str:
        return "; ".join(f"k ≤ {d}: {t['knob']} {s} (recall {r:.3f})"
                         for d, s, r in zip(t["depths"], t["settings"], t["measured"], strict=True))
    line = per_depth(tuned)
    filtered = tuned.get("filtered")
    if filtered:
        line += (f"; within domains {filtered['domain']} (the narrowest {filtered['share']:.1%} of the rows; narrower "
                 f"domains widen these): {per_depth(filtered)}")
    return line


@bank_app.command("info")
def info_command(
    bank_dir: Path = typer.Argument(..., metavar="DIR", help="Bank directory."),
    full_check: bool = typer.Option(False, "--full-check", help="Hash every file in full, not just head and tail."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and counts as JSON."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Verify a bank and show what it holds."""
    from dualpath.bank import ConceptBank

    # --config too, as every command: its bank section may say where a Milvus-backed bank's index lives.
    cfg = load_config(config, bank={"milvus_uri": milvus_uri})
    with ConceptBank.open(bank_dir, cfg, verify="full" if full_check else "quick") as bank:
        summary = {**_summary(bank), "domains": {str(k): v for k, v in bank.domains().items()}}
        manifest = bank.manifest
    if as_json:
        print_json({**summary, "manifest": manifest})
        return
    table = Table(title=f"bank {bank_dir} (verified{', full' if full_check else ''})", title_justify="left")
    table.add_column("field")
    table.add_column("value")
    for key in ("concepts", "documents", "dim", "encoder", "dtype", "backend", "index"):
        table.add_row(key, str(summary[key]))
    tuned = manifest["index"].get("search")
    if tuned:  # the search settings tuned per depth to the stated recall (bank/tuning.py)
        table.add_row("search", _tuned_settings(tuned) + f" (stated {tuned['recall']:.2f}, {tuned['queries']} queries)")
    table.add_row("created / updated", f"{manifest.get('created')} / {manifest.get('updated')}")
    table.add_row("domains", ", ".join(f"{d} {n}" for d, n in summary["domains"].items()))
    console.print(table)


@bank_app.command("search")
def search_command(
    bank_dir: Path = typer.Argument(..., metavar="DIR", help="Bank directory."),
    text: str = typer.Argument(..., help="Query text (encoded with the bank's own encoder)."),
    k: int = typer.Option(5, "-k", "--k", min=1, max=MAX_SEARCH_K, help="How many concepts to return."),
    domain: str | None = typer.Option(None, "--domain", help="Only concepts of this domain."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    device: str | None = DEVICE_OPTION,
) -> None:
    """Nearest concepts to a text, by cosine similarity."""
    from dualpath.bank import ConceptBank
    from dualpath.errors import DualPathError

    check_text(text, "the query text")
    if not text.strip():
        raise DualPathError("the query text is empty")
    with ConceptBank.open(bank_dir, load_config(config, device=device, bank={"milvus_uri": milvus_uri})) as bank:
        ids, scores = bank.search(bank.encoder().encode([text]), k, domain=domain)
        found = ids[0] >= 0
        hits = [
            {
                "rank": rank,
                "id": c.id,
                "score": round(float(s), 4),
                "doc_id": c.doc_id,
                "position": c.position,
                "domain": c.domain,
                "title": c.title,
                "text": c.text,
            }
            for rank, (c, s) in enumerate(zip(bank.concepts(ids[0][found]), scores[0][found], strict=True), start=1)
        ]
    if as_json:
        print_json({"query": text, "k": k, "domain": domain, "results": hits})
        return
    table = Table(title=f"{text!r} in {bank_dir}" + (f" (domain {domain})" if domain else ""), title_justify="left")
    for column, justify in (("#", "right"), ("score", "right"), ("id", "right"), ("title", "left"), ("text", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for hit in hits:
        table.add_row(str(hit["rank"]), f"{hit['score']:.3f}", str(hit["id"]), hit["title"], hit["text"])
    console.print(table)


def _summary(bank: Any) -> dict[str, Any]:
    return {
        "path": str(bank.path),
        "concepts": len(bank),
        "documents": int(bank.manifest.get("documents", len(bank.documents()))),
        "dim": bank.dim,
        "encoder": bank.encoder_name,
        "dtype": bank.dtype,
        "backend": bank.manifest["backend"],
        "index": bank.index_spec,
    }

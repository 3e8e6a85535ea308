"""`dualpath report` and `dualpath demo`: the measured picture of a bank, and the whole system end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dualpath.cli.common import (
    BANK_OPTION,
    CONFIG_OPTION,
    DEVICE_OPTION,
    MILVUS_URI_OPTION,
    load_config,
    make_console,
    open_bank,
)
from dualpath.cli.generate import DECISION_STYLE, prompt_matches_text
from dualpath.fileio import check_output_directory

if TYPE_CHECKING:
    from rich.console import Console

    from dualpath.pipeline.demo import DemoResult

console = make_console()


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("demo")(demo_command)


def report_command(
    bank: Path = BANK_OPTION,
    out: Path = typer.Option(Path("report"), "--out", help="Directory for report.md, results.json and plots."),
    max_pairs: int = typer.Option(2000, "--max-pairs", min=1, help="Held-out pairs for the dual-path evaluation."),
    free_docs: int = typer.Option(200, "--free-docs", min=0, help="Held-out documents for the free-running test."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Write one Markdown page with plots: retrieval, LVM, decision mix, c_max, settings."""
    from dualpath.pipeline.generator import Generator
    from dualpath.pipeline.report import measure, write_report

    cfg = load_config(config, device=device, bank={"milvus_uri": milvus_uri})
    check_output_directory(out)  # before the measuring: a file at --out is refused at once
    generator = Generator.from_bank(open_bank(bank, cfg), cfg)
    try:
        path = write_report(measure(generator, cfg, max_pairs=max_pairs, free_docs=free_docs), out)
    finally:
        generator.close()
    console.print(f"report written to [bold]{path}[/]")


CASE_NOTES = {
    "known": "known: from an article the models trained on",
    "added": "added: from an article added to the bank after training",
    "restated": "restated: an article of the bank, in a user's own words",
    "unknown": "unknown: the bank holds no article on it",
}


def demo_command(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Where the bank, models and report go."),
    full: bool = typer.Option(False, "--full", help="All ~10,000 articles instead of the default subset."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo every stage instead of reusing cached ones."),
    steps: int = typer.Option(4, "--steps", min=1, help="Concepts generated per prompt."),
    config: Path | None = CONFIG_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Build the Wikipedia sample bank, train the LVM and tower, calibrate, generate in every lane, report."""
    from dualpath.pipeline.demo import run_demo

    cfg = load_config(config, device=device)
    started = time.perf_counter()
    console.rule("dualpath demo")

    def on_stage(name: str, status: str) -> None:
        console.print(f"[bold]{name:<10}[/] {status}")

    result = run_demo(out, full=full, fresh=fresh, cfg=cfg, steps=steps, on_stage=on_stage)
    print_generations(result, cfg.generation.prompt_anchor_cosine, console)
    console.print(
        "[dim]p: the probability that a step's candidate is the true next concept, from the evidence in brackets "
        "(successor: the bank concept that follows the one the text so far matches). quota-neutral is the "
        "reference's rule on c, kept as a baseline.[/]"
    )
    console.rule()
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    console.print(f"bank:   [bold]{result.bank}[/]")
    console.print(f"report: [bold]{result.report}[/]")


def print_generations(result: DemoResult, said_at: float, console: Console) -> None:
    """The demo's generations, prompt by prompt: what the bank holds of the prompt, each lane's steps, and a
    line on how the lanes differ."""
    for prompt, lanes in result.generations.items():
        case = result.cases.get(prompt)
        console.rule(f"[bold]{prompt}" + (f" [dim]({CASE_NOTES.get(case, case)})[/]" if case else ""))
        if result.prompt_matches.get(prompt):
            console.print(prompt_matches_text(result.prompt_matches[prompt], said_at), highlight=False)
        for lane, steps_done in lanes.items():
            console.print(f"[bold]{lane}[/]")
            for step in steps_done:
                r = step.record
                d = r.decision.value
                c = "-" if r.c_max is None else f"{r.c_max:.3f}"
                why = f"c={c}" if r.confidence is None else f"p={r.confidence:.2f} ({r.candidate_source or 'none'})"
                mark = "≈ " if step.approximate else ""
                far = f" [dim](cos {step.text_cosine:.2f})[/]" if step.approximate and step.text else ""
                style = DECISION_STYLE.get(d, "white")
                console.print(f"  [{style}]{d:<14}[/] {why:<22} α={r.alpha:.2f}  {mark}{step.text}{far}",
                              highlight=False)
        shown = [[step.text_concept_id for step in steps_done] for steps_done in lanes.values()]
        differ = sum(len(set(column)) > 1 for column in zip(*shown, strict=True))
        exact = ", ".join(
            f"{lane} {sum(not step.approximate for step in steps_done)}" for lane, steps_done in lanes.items()
        )
        console.print(
            f"[dim]The lanes show different sentences at {differ} of {len(shown[0]) if shown else 0} steps; "
            f"exact bank sentences: {exact}.[/]"
        )
        everything = [step for steps_done in lanes.values() for step in steps_done]
        grounded = {lane: steps_done for lane, steps_done in lanes.items()
                    if steps_done and steps_done[0].record.confidence is not None}
        decided = {tuple((s.record.decision, s.text_concept_id) for s in steps_done)
                   for steps_done in grounded.values()}
        if everything and all(step.record.decision.value == "NOVEL" for step in everything):
            # Identical lanes look like a bug to a reader; say why they are identical.
            console.print(
                "[dim]Every step of every lane stayed NOVEL: no candidate carried evidence that the bank holds the "
                "continuation (p, the probability that it is the true next concept, stayed below every lane's "
                "level), so each lane keeps the LVM's vectors. ≈ marks the nearest bank sentence shown for a novel "
                "vector.[/]"
            )
        elif len(grounded) > 1 and len(decided) == 1:
            levels = ", ".join(f"{lane} {result.lanes[lane].tau_snap:.2f}" for lane in grounded)
            console.print(
                "[dim]The lanes that ground on evidence agree here: at every step p was near 1 or below every "
                f"lane's SNAP level ({levels}), so their risk levels make no difference. They part where p falls "
                "between those levels.[/]"
            )
        elif everything and differ == 0:
            console.print(
                "[dim]The lanes decided differently but show the same sentences: a BLEND or NOVEL step is shown "
                "as the bank sentence nearest its vector (≈), which here is the same in every lane; what differs "
                "is how much each step leans on the bank (α) and which steps are the bank's own text.[/]"
            )

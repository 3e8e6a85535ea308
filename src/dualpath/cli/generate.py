"""`dualpath generate`, `dualpath calibrate` and `dualpath eval generation`: the dual path end to end."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dualpath.cli.common import (
    BANK_OPTION,
    CONFIG_OPTION,
    DEVICE_OPTION,
    MILVUS_URI_OPTION,
    TELEMETRY_OPTION,
    check_text,
    column_style,
    load_config,
    make_console,
    open_bank,
    open_telemetry,
    print_json,
    read_prompt,
)
from dualpath.cli.groups import eval_app
from dualpath.config import DeciderConfig, GenerationConfig

if TYPE_CHECKING:
    from dualpath.pipeline.generator import PromptMatch

# Options whose default lives in the config (a --config file may change it) default to None here, so
# typer shows no default of its own: the help states the config's, which tests/test_docs.py checks.
GEN = GenerationConfig()

console = make_console()
DECISION_STYLE = {"SNAP": "green", "BLEND": "cyan", "NOVEL": "yellow", "NOVEL_DUP_DROP": "magenta"}


def fallback_note(reason: str, skipped_used: int, skipped_paraphrases: int) -> str:
    """Why a step had no candidate, for a reader: an `empty` step whose candidates were all refused says so
    (the shortlist came back; what it held was already shown or restated what was said)."""
    if reason == "empty" and skipped_used + skipped_paraphrases:
        refused = [f"{skipped_used} already shown"] if skipped_used else []
        if skipped_paraphrases:
            plural = "" if skipped_paraphrases == 1 else "s"
            refused.append(f"{skipped_paraphrases} paraphrase{plural} of what was said")
        return f"every candidate refused: {', '.join(refused)}"
    return f"retrieval: {reason}"


def step_ms(latency: dict[str, float]) -> float:
    """A step's own time: its total less the prompt's encoding, which the first step's total also carries."""
    return latency["total"] - latency.get("encode", 0.0)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("calibrate")(calibrate_command)


def generate_command(
    prompt: str | None = typer.Argument(
        None, help="Prompt text (one or more sentences); - reads it from standard input."
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="Read the prompt from this UTF-8 text file (- for standard input).",
    ),
    bank: Path = BANK_OPTION,
    steps: int | None = typer.Option(None, "--steps", "-n", help=f"Concepts to generate. \\[default: {GEN.steps}]"),
    lane: str | None = typer.Option(
        None, "--lane", "-l",
        help=f"Lane (conservative, neutral, creative, legal, yours). \\[default: {DeciderConfig().default_lane}]",
    ),
    lanes_file: Path | None = typer.Option(None, "--lanes", help="Your lanes YAML, merged over the shipped lanes."),
    temperature: float | None = typer.Option(
        None, "--temperature", "-t",
        help=f"Sample n* among the shortlist at this temperature (0: greedy). \\[default: {GEN.temperature:g}]",
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", help=f"Sample among the k best candidates only (0: all). \\[default: {GEN.top_k}]"
    ),
    top_p: float | None = typer.Option(
        None, "--top-p", help=f"Sample within this share of the weight (nucleus). \\[default: {GEN.top_p:g}]"
    ),
    seed: int | None = typer.Option(
        None, "--seed", min=0, help=f"Seed of the sampling draws: the same seed repeats a run. \\[default: {GEN.seed}]"
    ),
    lvm_temperature: float | None = typer.Option(
        None, "--lvm-temperature", min=0.0, max=2.0,
        help="How widely the LVM's sampler draws each vector around the LVM's mean (0: the mean itself; "
        f"used when the bank's LVM has a sampler). \\[default: {GEN.lvm_temperature:g}]",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per step (telemetry + text)."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    telemetry: Path | None = TELEMETRY_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Generate from a prompt: each step SNAPs, BLENDs or stays NOVEL, and says why."""

    cfg = load_config(
        config,
        device=device,
        generation={
            "steps": steps, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
            "lvm_temperature": lvm_temperature,
        },
        decider={"lanes_file": lanes_file},
        bank={"milvus_uri": milvus_uri},
    )
    # Before the heavy imports: a bad prompt, or a telemetry path that cannot be written, answers at once.
    prompt = read_prompt(prompt, prompt_file, cfg.generation.max_prompt_chars)
    check_text(prompt, "the prompt")
    sink = open_telemetry(telemetry)
    from dualpath.pipeline.generator import Generator

    try:
        generator = Generator.from_bank(open_bank(bank, cfg), cfg)
    except BaseException:
        if sink is not None:
            sink.close()
        raise
    if sink is not None:
        generator.telemetry = sink
    try:
        if as_json:
            for step in generator.generate(prompt, steps=cfg.generation.steps, lane=lane):
                print_json(step.to_dict())
            return
        chosen = generator.lane(lane)
        state = "calibrated" if chosen.calibrated else "UNCALIBRATED"
        on = "p" if chosen.rule == "confidence" else "c"  # what the thresholds are levels of
        table = Table(
            title=f"lane {chosen.name} ({state}: SNAP at {on} ≥ {chosen.tau_snap:.3f}, NOVEL at {on} ≤ "
            f"{chosen.tau_novel:.3f}, K {chosen.k}); query from {'tower' if generator.tower else 'LVM'}",
            title_justify="left",
            caption="p: the probability that the candidate is the true next concept; from: where it came from "
            "(tower, lvm, or the successor of the bank concept the context matched)" if on == "p" else None,
            caption_justify="left",
        )
        columns = [("#", "right"), ("decision", "left"), ("c_max", "right")]
        columns += [("p", "right"), ("from", "left")] if on == "p" else []
        columns += [("α", "right"), ("text", "left"), ("ms", "right")]
        for column, justify in columns:
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        encode_ms = None
        matches: list[PromptMatch] = []
        for step in generator.generate(prompt, steps=cfg.generation.steps, lane=lane, prompt_out=matches):
            encode_ms = step.latency_ms.get("encode", encode_ms)
            r = step.record
            decision = r.decision.value
            text = step.text if not step.approximate else f"≈ {step.text} [dim](cos {step.text_cosine:.2f})[/]"
            if r.fallback_reason:
                note = fallback_note(r.fallback_reason, r.skipped_used, r.skipped_paraphrases)
                text += f" [{'dim' if note.startswith('every') else 'red'}]({note})[/]"
            evidence = [
                "-" if r.confidence is None else f"{r.confidence:.3f}", r.candidate_source or "-",
            ] if on == "p" else []
            table.add_row(
                str(r.step),
                f"[{DECISION_STYLE.get(decision, 'white')}]{decision}[/]",
                "-" if r.c_max is None else f"{r.c_max:.3f}",
                *evidence,
                f"{r.alpha:.2f}",
                text,
                f"{step_ms(step.latency_ms):.0f}",
            )
        console.print(table)
        if encode_ms is not None:
            console.print(f"[dim]ms: each step's own time. Before step 0 the prompt was encoded in {encode_ms:,.0f} ms "
                          "(a process's first prompt also loads the encoder).[/]")
        console.print(prompt_matches_text(matches, cfg.generation.prompt_anchor_cosine))
    finally:
        generator.close()


MATCHES_SHOWN = 4  # a long prompt's last sentences: the ones its grounding starts from


def prompt_matches_text(matches: list[PromptMatch], said_at: float) -> str:
    """What the bank holds of the prompt, as console markup: each of its last sentences and the nearest bank
    concept, marked where it counts as said."""
    shown = f" (the last {MATCHES_SHOWN} of {len(matches)} sentences)" if len(matches) > MATCHES_SHOWN else ""
    lines = [f"[dim]The prompt in the bank{shown}: each sentence's nearest concept; at cos ≥ {said_at:.2f} it "
             "counts as said and is never shown.[/]"]
    for match in matches[-MATCHES_SHOWN:]:
        found = f'"{escape(match.text)}" (cos {match.cosine:.2f}{", said" if match.said else ""})' \
            if match.concept_id >= 0 else "nothing"
        lines.append(f'  "{escape(match.sentence)}" → {found}')
    return "\n".join(lines)


def calibrate_command(
    bank: Path = BANK_OPTION,
    max_pairs: int = typer.Option(
        3000, "--max-pairs", min=1, help="Held-out pairs to measure c_max on (teacher-forced)."
    ),
    free_docs: int = typer.Option(
        200, "--free-docs", min=0, help="Held-out prompts of the free-running calibration (0: teacher-forced only)."
    ),
    lanes_file: Path | None = typer.Option(None, "--lanes", help="Your lanes YAML (lanes with target shares)."),
    as_json: bool = typer.Option(False, "--json"),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Set each lane's τ_snap / τ_novel from its target shares, measured on held-out documents."""
    from dualpath.pipeline.calibrate import calibrate_bank
    from dualpath.pipeline.generator import Generator

    cfg = load_config(config, device=device, decider={"lanes_file": lanes_file}, bank={"milvus_uri": milvus_uri})
    generator = Generator.from_bank(open_bank(bank, cfg), cfg, calibrating=True)
    result = calibrate_bank(
        generator.bank, generator.lvm, generator.tower, cfg, max_pairs=max_pairs, generator=generator,
        free_docs=free_docs,
    )
    if as_json:
        print_json(result)
        return
    basis = (
        f"{result['free_running_steps']} free-running steps" if result.get("basis") == "free-running"
        else f"{result['pairs']} teacher-forced held-out pairs"
    )
    confidence = result.get("confidence", {})
    fit = confidence.get("fit", {})
    table = Table(
        title=f"calibrated ({bank}): quota lanes on {basis}; the SNAP confidence on {confidence.get('pairs', 0)} "
        f"held-out pairs in 3 cases (Brier {fit.get('brier', float('nan')):.4f}, base rate "
        f"{fit.get('brier_base_rate', float('nan')):.4f})",
        title_justify="left",
    )
    for column in ("lane", "rule", "τ_snap", "τ_novel", "c p5/p50/p95"):
        table.add_column(column)
    quantiles = result.get("free_running_c_quantiles") if result.get("basis") == "free-running" else None
    for name, lane in result["lanes"].items():
        q = (quantiles or result["c_max_quantiles"]).get(name)
        spread = "-" if q is None else f"{q[0]:.3f} / {q[2]:.3f} / {q[4]:.3f}"
        rule = lane.get("rule", "c_max")
        levels = "p" if rule == "confidence" else "c"
        table.add_row(name, rule, f"{levels} {lane['tau_snap']:.4f}", f"{levels} {lane['tau_novel']:.4f}", spread)
    console.print(table)


@eval_app.command("generation")
def eval_generation_command(
    bank: Path = BANK_OPTION,
    lanes: list[str] | None = typer.Option(
        None, "--lanes",
        help="Lanes to evaluate, repeatable: a name, or a lanes YAML (.yaml/.yml) whose lanes are added and evaluated. "
        "\\[default: all but reference-*]",
    ),
    max_pairs: int = typer.Option(2000, "--max-pairs", min=1, help="Held-out pairs (teacher-forced)."),
    free_docs: int = typer.Option(
        200, "--free-docs", min=0, help="Held-out documents for the free-running test (0: teacher-forced only)."
    ),
    as_json: bool = typer.Option(False, "--json"),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Decision mix and output quality per lane, against LVM-only and bank-only, on held-out documents."""
    from dualpath.decider import get_lane
    from dualpath.pipeline.calibrated_lanes import user_lane_definitions
    from dualpath.pipeline.evaluate import evaluate_generation
    from dualpath.pipeline.generator import Generator

    # `--lanes` selects lanes by name, as it always did; a YAML file among them adds its lanes the way
    # `--lanes FILE` does for generate and calibrate, so a lane is added the same way everywhere.
    files = [value for value in lanes or [] if value.endswith((".yaml", ".yml"))]
    if len(files) > 1:
        raise typer.BadParameter("give at most one lanes file", param_hint="'--lanes'")
    lanes_file = Path(files[0]) if files else None
    cfg = load_config(config, device=device, decider={"lanes_file": lanes_file}, bank={"milvus_uri": milvus_uri})
    generator = Generator.from_bank(open_bank(bank, cfg), cfg)
    names = [value for value in lanes or [] if value not in files]
    names += [name for name in user_lane_definitions(lanes_file) if name not in names]
    names = names or [n for n in generator.lanes if not n.startswith("reference-")]
    chosen = {name: get_lane(generator.lanes, name) for name in names}
    result = evaluate_generation(
        generator.bank, generator.lvm, generator.tower, chosen, cfg, max_pairs=max_pairs, free_docs=free_docs,
        generator=generator,
    )
    if as_json:
        print_json(result)
        return
    for table in cases_tables(result, console):
        console.print(table)
    console.print(generation_table(result))
    for case, free in result.get("free_running_cases", {}).items():
        console.print(free_running_table(free, case))


CASES_TITLE = ("known: documents the models trained on · added: in the bank, never seen by the models · "
               "restated: added, the prompt in other words · unknown: not in the bank")
# A terminal too narrow for the summary whole gets it as two tables, each row on one line: what the
# teacher-forced pairs measured, then the free-running streams, named by the title instead of each column.
TEACHER_FORCED_HALF = {"case": "case", "lane": "lane", "snap": "SNAP", "cos": "cos", "x_lvm": "× LVM-only",
                       "exact": "exact next", "false_grounding": "false grounding",
                       "vs_random": "− random mix (95 % CI)"}
FREE_RUNNING_HALF = {"case": "case", "lane": "lane", "free_cos": "cos", "free_vs_lvm": "− LVM-only (95 % CI)",
                     "free_vs_random": "− random mix (95 % CI)", "in_order": "in order"}


def cases_tables(result: dict, terminal: Console) -> list[Table]:
    """Every lane in the three cases (pipeline.evaluate.case_summary): one table, teacher-forced beside
    free-running, where `terminal` is wide enough to show each row on one line; else its teacher-forced
    and its free-running half, one above the other."""
    from dualpath.pipeline.evaluate import SUMMARY_COLUMNS, SUMMARY_PERCENT, case_summary

    rows = case_summary(result)

    def summary(columns: dict[str, str], title: str) -> Table:
        table = Table(title=title, title_justify="left")
        cells = [[_cell(row[key], key in SUMMARY_PERCENT) for key in columns] for row in rows]
        for i, (key, column) in enumerate(columns.items()):
            table.add_column(column, **column_style(key in ("case", "lane"), [line[i] for line in cells]))
        for row, line in zip(rows, cells, strict=True):
            table.add_row(*line, style="dim" if row["lane"] in ("lvm-only", "knn") else None)
        return table

    whole = summary(SUMMARY_COLUMNS, CASES_TITLE)
    probe = Console(width=terminal.width, file=io.StringIO(), record=True)
    probe.print(whole)
    if sum(line.startswith("│") for line in probe.export_text().splitlines()) == len(rows):  # a line a row
        return [whole]
    return [summary(TEACHER_FORCED_HALF, f"{CASES_TITLE}\nteacher-forced: the true context at every step"),
            summary(FREE_RUNNING_HALF, "free-running: each stream fed its own outputs; cos of the text it shows to "
                    "the document's own next concepts, and the share of those it shows in order")]


def generation_table(result: dict) -> Table:
    table = Table(
        title=f"added case, teacher-forced on {result['pairs']} held-out pairs (query from {result['query_source']})",
        title_justify="left",
    )
    for column in ("lane", "τ_snap", "τ_novel", "SNAP", "BLEND", "NOVEL", "DUP", "mean cos", "hit@5"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for name, row in result["lanes"].items():
        shares = {d: v["share"] for d, v in row["by_decision"].items()}
        table.add_row(
            name,
            f"{row['tau_snap']:.3f}",
            f"{row['tau_novel']:.3f}",
            f"{shares['SNAP']:.1%}",
            f"{shares['BLEND']:.1%}",
            f"{shares['NOVEL']:.1%}",
            f"{shares['NOVEL_DUP_DROP']:.1%}",
            f"{row['mean_cos']:.4f}",
            f"{row['hit@5']:.3f}",
            style="dim" if name in ("lvm-only", "bank-only") else None,
        )
    return table


# The free-running columns a terminal shows, to fit 120 columns (the report and --json have them all): whether
# the text repeats, how close it stays to the truth, how each lane decided, and each lane against its random
# mix and LVM-only.
TERMINAL_FREE_RUNNING = ("name", "repeat_rate", "near_repeat_rate", "cos_true", "in_order", "snap", "blend", "novel",
                         "vs_random", "vs_lvm_only")


def free_running_table(result: dict, case: str = "added") -> Table:
    from dualpath.pipeline.free_running import FREE_RUNNING_COLUMNS, PERCENT_KEYS, free_running_note, free_running_rows

    table = Table(
        title=f"{case} case, free-running: {result['prompts']} prompts of {result['prompt_concepts']} concepts from "
        f"{result['docs']} documents, "
        f"{result['steps']} steps each, as a reader sees them",
        title_justify="left",
        caption=free_running_note(result, successive_column=False).replace("`", "")
        + " Every column: --json, or the report (dualpath report).",
        caption_justify="left",
    )
    rows = free_running_rows(result)
    cells = [[_cell(row[key], key in PERCENT_KEYS) for key in TERMINAL_FREE_RUNNING] for row in rows]
    for i, key in enumerate(TERMINAL_FREE_RUNNING):
        table.add_column(FREE_RUNNING_COLUMNS[key], **column_style(key == "name", [line[i] for line in cells]))
    for row, line in zip(rows, cells, strict=True):
        baseline = row["name"] in ("lvm-only", "bank-only", "knn") or row["name"].startswith("random-")
        table.add_row(*line, style="dim" if baseline else None)
    return table


def _cell(value: object, percent: bool) -> str:
    """An evaluation table's cell: a name or interval as it is, a share as a percentage, a number to 4 places."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.1%}" if percent else f"{value:.4f}"

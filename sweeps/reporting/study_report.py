"""``vlm-sweep run``'s report (``OUT/report.md``, and ``OUT/report.html``: the same as one self-contained page, see
``sweeps.reporting.html_report``): what the run's scale can show, the data, the sweep's stages, the
evaluation of every stage-2 checkpoint with its text-only controls, sample generations, the best config and the
command to chat with it. The sweep's own report (every trial, ASHA, lineage) is ``sweeps.reporting.sweep_report``.

    >>> from sweeps.reporting.study_report import chat_command
    >>> chat_command('ckpt', 'a.jpg', 'Hi?')
    "vlm-sweep chat --checkpoint ckpt --image a.jpg 'Hi?'"
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from vlm_core.base.outputs import atomic_write_text
from vlm_core.data.images import resolve_image
from vlm_core.evaluation.answers import SHORT_ANSWER_INSTRUCTION

from ..scheduling import DECISIONS_FILE, read_decisions
from .benchmark_table import read_evals
from .benchmark_table import section as benchmark_section
from .html_report import write_html
from .markdown import markdown_table
from .results import AXES, experiment_dirs
from .search_section import is_param_column, readable_params
from .search_section import section as search_section
from .sweep_report import token_length_section


def _relative_figure(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def scale_sentence(table: pd.DataFrame) -> str:
    """One sentence on what the run's scale can show, from the steps each trial trained and the samples it saw."""
    def span(col: str) -> str:
        values = table[col].dropna()
        lo, hi = (int(values.min()), int(values.max())) if len(values) else (0, 0)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    others = [a for a in AXES if a != "scheduler"] + ["stage"]
    pairs = [g for _, g in table.groupby(others, dropna=False) if set(g["scheduler"]) >= {"linear", "cosine"}]
    same = [g for g in pairs if g["best_val_loss"].notna().all() and g["best_val_loss"].nunique() == 1]
    why = (f" {len(same)} of the {len(pairs)} pairs of configs that differ only in the LR schedule give identical "
           f"val losses: at so few steps the schedules cannot differ." if same else "")
    return (f"**What this run can show:** each trial trained {span('steps')} optimizer steps and saw "
            f"{span('samples_seen')} training samples ({len(table)} trials) — a check that the whole study runs "
            f"end to end and that the numbers are computed as documented, not the study's conclusion about which "
            f"config is best.{why}")


CONDITION_NAMES = {"image": "with image", "zeros": "zeroed image", "shuffled": "another image"}


def shell_quote(text: str) -> str:
    """``text`` as one bash word on one line: ``shlex.quote``, or ``$'…'`` when it holds a line break (the prompt:
    question, newline, short-answer instruction)."""
    if "\n" not in text:
        return shlex.quote(text)
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_command(checkpoint: str, image: str, question: str) -> str:
    """The ``vlm-sweep chat`` command that asks ``question`` of ``image`` with ``checkpoint``, copy-pasteable."""
    return f"vlm-sweep chat --checkpoint {shell_quote(str(checkpoint))} --image {shell_quote(str(image))} " \
           f"{shell_quote(question)}"


def _image_root(evaluation: dict[str, Any]) -> Path:
    """The image folder an evaluation's questions refer to (as recorded; an evaluation that did not record it used
    the sample corpus's ``images/`` beside its questions file)."""
    return Path(evaluation.get("images") or Path(evaluation["questions"]).parent / "images")


def _cell(text: Any) -> str:
    """A generated answer as one Markdown table cell: pipes escaped, line breaks shown as ⏎."""
    return " ⏎ ".join(str(text).splitlines()).replace("|", "\\|")


def _protocol_sentence(evals: list[dict[str, Any]]) -> str:
    """The prompt and token budget the answers were generated with (one line per distinct protocol)."""
    seen: list[tuple[str | None, int | None]] = []
    for e in evals:
        p = e["answers"].get("protocol") or {}
        key = (p.get("instruction"), p.get("max_new_tokens"))
        if key not in seen:
            seen.append(key)

    def one(instruction: str | None, tokens: int | None) -> str:
        if instruction is None:
            return "an older protocol that recorded no instruction (bare question, first-line exact match)"
        whose = " (LLaVA-1.5's)" if instruction == SHORT_ANSWER_INSTRUCTION else ""
        prompt = (f"the question, a newline and the short-answer instruction \"{instruction}\"{whose}"
                  if instruction else "the bare question (no short-answer instruction)")
        return f"{prompt}, answered greedily with up to {tokens} new tokens"

    return "Prompt: " + "; ".join(one(*k) for k in seen) + "."


def _scores(evals: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per checkpoint: held-out loss and perplexity, ``acc_*`` / ``em_*`` per condition, the gain over
    another question's image; best first (accuracy with the image, then the gain, then the held-out loss)."""
    conditions = list(dict.fromkeys(c for e in evals for c in e["answers"]["accuracy"]))
    rows = []
    for e in evals:
        cid = e.get("config_id") or e["checkpoint"]
        acc, held = e["answers"]["accuracy"], e.get("heldout", {})
        em = e["answers"].get("exact_match", {})
        row = {"config_id": cid, "val_loss": held.get("image", {}).get("loss", math.nan),
               "perplexity": held.get("image", {}).get("perplexity", math.nan),
               "val_loss_zeros": held.get("zeros", {}).get("loss", math.nan),
               "val_loss_shuffled": held.get("shuffled", {}).get("loss", math.nan)}
        for c in conditions:
            row[f"acc_{c}"], row[f"em_{c}"] = acc.get(c, math.nan), em.get(c, math.nan)
        rows.append({**row, "questions": e["answers"]["n"], "checkpoint": e["checkpoint"]})
    ev = pd.DataFrame(rows)
    for c in ("zeros", "shuffled"):
        if f"acc_{c}" not in ev:
            ev[f"acc_{c}"] = ev[f"em_{c}"] = math.nan
    ev["gain_vs_shuffled"] = ev["acc_image"] - ev["acc_shuffled"]
    # rank on the questions (shared by every trial, as is the common held-out set), then on the image's gain
    return ev.sort_values(["acc_image", "gain_vs_shuffled", "val_loss"], ascending=[False, False, True])


def _by_type_lines(answers: dict[str, Any]) -> list[str]:
    """The best config's accuracy and exact match per question type and condition, and its unanswered yes/nos."""
    by_type, em_by_type = answers["by_type"], answers.get("exact_match_by_type", {})
    conds = list(by_type)
    lines = ["| question type | questions | " + " | ".join(f"acc_{c} | em_{c}" for c in conds) + " |",
             "|---|---|" + "---|---|" * len(conds)]

    def rate(table: dict, c: str, t: str) -> str:
        v = table.get(c, {}).get(t)
        return "" if v is None else f"{v:.3f}"

    for t, n in answers["type_counts"].items():
        lines.append(f"| {t} | {n} | " + " | ".join(f"{rate(by_type, c, t)} | {rate(em_by_type, c, t)}"
                                                    for c in conds) + " |")
    if "unanswered" in answers:
        lines += ["", "Yes/no questions answered with neither yes nor no as the first word (counted wrong): "
                  + ", ".join(f"{CONDITION_NAMES.get(c, c)} {n}" for c, n in answers["unanswered"].items()) + "."]
    return lines


def _sample_lines(root: Path, evaluation: dict[str, Any], shown: list[str]) -> list[str]:
    """The best config's sample generations under each condition shown, with their images and verdicts."""
    answers = evaluation["answers"]

    def answer_cell(s: dict, c: str) -> str:
        mark = ("" if f"correct_{c}" not in s else
                " ✓✓" if s.get(f"exact_{c}") else " ✓" if s[f"correct_{c}"] else " ✗")
        return _cell(s.get(f"answer_{c}", "")) + mark

    instruction = (answers.get("protocol") or {}).get("instruction")
    lines = ["Sample generations (✓ right by the field's rule, ✓✓ also a strict exact match, ✗ wrong"
             + ("; the prompt adds the instruction above to each question" if instruction else "") + "):", "",
             "| image | question | expected | " + " | ".join(CONDITION_NAMES[c] for c in shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]
    for s in answers["samples"]:
        img = resolve_image(s["image"], _image_root(evaluation))
        rel = _relative_figure(img, root) if img.resolve().is_relative_to(root.resolve()) else img
        lines.append(f"| ![]({rel}) | {_cell(s['question'])} | {_cell(s['expected'])} | "
                     + " | ".join(answer_cell(s, c) for c in shown) + " |")
    return lines


def evaluation_section(root: Path, evals: list[dict[str, Any]], chosen: tuple[str, str] | None = None
                       ) -> tuple[list[str], dict[str, Any] | None]:
    """The report's evaluation: per checkpoint held-out loss and answer scores under each condition — accuracy by
    the field's rule (``acc_*``) beside strict exact match (``em_*``) — then the best config with its scores per
    question type and its sample generations. ``chosen``: (config id, the metric that chose it), when the best
    config is named by ``--select-by`` rather than by easy-vqa accuracy. Returns (Markdown lines, the best config's
    summary or None)."""
    if not evals:
        return [], None
    ev = _scores(evals)
    rule = "is the one with the highest `acc_image` (then the largest gain)"
    if chosen is not None and chosen[0] in set(ev["config_id"]):
        ev = pd.concat([ev[ev["config_id"] == chosen[0]], ev[ev["config_id"] != chosen[0]]])
        rule = f"is the best by `{chosen[1]}` (`--select-by`; see the Benchmarks table)"
    lines = ["## Evaluation (stage-2 checkpoints)", "",
             "Held-out loss on the common held-out set (the same rows for every trial); answers to the same held-out "
             "easy-vqa questions for every trial (equal shares of yes/no, colour and shape questions) with the "
             "question's image, with the image features zeroed, and with another question's image (the text-only "
             "controls). " + _protocol_sentence(evals), "",
             "Scored the way LLaVA-1.5 / lmms-eval score short answers, after VQAv2 answer normalisation (lowercase, "
             "punctuation, number words to digits, articles, contractions): `acc_*` is the field's rule — a yes/no "
             "question is right when the answer's first word is the expected yes/no (anything else is unanswered, "
             "so wrong), an open question when the expected answer occurs as a whole word in the answer (\"The "
             "color of the circle is red.\" is right for red; whole-word containment does not read \"not red\" or "
             "\"red or blue\") — and `em_*` is strict exact match (the whole normalised answer is the expected "
             "one). The gap between `acc_image` and the controls is what the image contributes; the best config "
             f"{rule}.", "",
             markdown_table(ev.drop(columns=["checkpoint"])), ""]
    b = ev.iloc[0]
    e = next(x for x in evals if x["checkpoint"] == b["checkpoint"])
    answers = e["answers"]
    sample = answers["samples"][0] if answers["samples"] else {}
    best = {"config_id": b["config_id"], "val_loss": float(b["val_loss"]), "checkpoint": b["checkpoint"],
            "accuracy": answers["accuracy"], "by_type": answers["by_type"],
            "exact_match": answers.get("exact_match", {}),
            "exact_match_by_type": answers.get("exact_match_by_type", {}), "protocol": answers.get("protocol"),
            "sample_image": str(resolve_image(sample.get("image", ""), _image_root(e))),
            # the prompt the answers were generated from (question + short-answer instruction), so that the chat
            # command below reproduces the sample generation
            "sample_question": sample.get("prompt", sample.get("question", ""))}
    shown = [c for c in CONDITION_NAMES if c in answers["accuracy"]]  # the image and the controls that ran
    lines += [f"## Best config: `{b['config_id']}`", "",
              f"Val loss {b['val_loss']:.4f}; accuracy (field's rule) "
              + ", ".join(f"{CONDITION_NAMES[c]} {b[f'acc_{c}']:.3f}" for c in shown) + "; strict exact match "
              + ", ".join(f"{CONDITION_NAMES[c]} {b[f'em_{c}']:.3f}" for c in shown)
              + f" ({int(b['questions'])} questions).", ""]
    lines += _by_type_lines(answers) + [""] + _sample_lines(root, e, shown)
    lines += ["", "Chat with it:", "", "```bash", chat_command(b["checkpoint"], best["sample_image"],
                                                              best["sample_question"]), "```", ""]
    return lines, best


def write_study_report(out: str | Path, manifest: dict[str, Any], sweep_dir: str | Path, sweep: dict[str, Any],
                       evals: list[dict[str, Any]], wall_s: float | None = None,
                       select_by: str | None = None) -> dict[str, Any]:
    """``vlm-sweep run``'s report: data summary, the sweep's report (``sweep``: what ``write_report`` returned
    when the sweep ended), evaluation with text-only controls, samples, the best config and how to chat with it.
    Written to ``out/report.md``; returns a summary."""
    root, sweep_dir = Path(out), Path(sweep_dir)
    table = pd.read_csv(sweep_dir / "trials.csv")
    lines = ["# vlm-sweep run: the study on the embedded default", ""]
    lines += [scale_sentence(table), ""]
    if wall_s is not None:
        lines += [f"Wall time of the invocation that wrote this report: {wall_s:.0f} s.", ""]
    counts = manifest.get("counts", {})
    lines += ["## Data", "", "| variant | train | val |", "|---|---|---|"]
    lines += [f"| {k} | {v['train']} | {v['val']} |" for k, v in manifest.get("variants", {}).items()]
    lines += ["", f"Read {counts.get('read')} records, rejected {counts.get('rejected_total')} "
              f"({json.dumps(manifest.get('rejected_by_reason', {}))}; each with its line and reason in "
              f"`data/rejected.jsonl`); {manifest.get('clusters', {}).get('k')} clusters in the UMAP space.", ""]
    if (root / "data" / "umap.png").is_file():
        lines += ["![umap](data/umap.png)", ""]
    lines += ["## Sweep", "", "Full tables, ASHA decisions and lineage: [sweep/report.md](sweep/report.md).", ""]
    lines += token_length_section(sweep_dir, "###")
    for stage in sorted(table["stage"].unique()):
        rows = table[table["stage"] == stage]
        searched = [c for c in rows.columns if is_param_column(c) and rows[c].notna().any()]
        part = rows[["config_id", *searched, "status", "best_val_loss", "epochs_run", "stopped_by_asha", "asha_rung",
                     "wall_s"]]
        lines += [f"### Stage {stage}", "", markdown_table(readable_params(part.sort_values("best_val_loss"))), ""]
    lines += search_section(table, experiment_dirs(sweep_dir), sweep_dir, "###", draw=False)[0]
    lines += [f"![{Path(f).stem}]({_relative_figure(Path(f), root)})" for f in sweep["figures"]] + [""]
    decisions = read_decisions(sweep_dir / "stage2" / DECISIONS_FILE)
    if decisions:
        lines += ["### ASHA decisions (stage 2)", "", "| trial | rung (epoch) | val loss | decision |",
                  "|---|---|---|---|"]
        lines += [f"| {d['trial']} | {d['rung']} | {d['val_loss']:.4f} | {d['decision']} |" for d in decisions]
        lines += [""]
    chosen = (sweep["best"][2], select_by) if select_by and 2 in sweep.get("best", {}) else None
    eval_lines, best = evaluation_section(root, evals, chosen)
    lines += benchmark_section(read_evals(sweep_dir), "##") + eval_lines
    atomic_write_text(root / "report.md", "\n".join(lines))
    page = write_html(root / "report.md")
    return {"report": str(root / "report.md"), "html": str(page), "sweep_report": sweep["report"],
            "trials": sweep["trials"],
            "stopped_by_asha": sweep["stopped_by_asha"], "errors": sweep["errors"], "best": best,
            "select_by": select_by or "easy-vqa accuracy", "wall_s": wall_s}

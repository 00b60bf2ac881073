"""What local mode shows a person: one progress bar per running sub-task, events as
they happen, then a summary table (base score, adapter score, lift, time, adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from anytasktune.local.supervisor import LocalExecutor
from anytasktune.summary import Event
from anytasktune_contract.trainspec import TrainJobSpec, metrics_for

console = Console(stderr=True)


class Progress:
    """Live view of the sub-tasks while they train (plain lines when disabled)."""

    def __init__(self, run: LocalExecutor, enabled: bool = True):
        self.run = run
        self.enabled = enabled and console.is_terminal
        self.live: Live | None = None
        self._last_plain: dict[str, str] = {}

    def __enter__(self) -> Progress:
        if self.enabled:
            self.live = Live(self._table(), console=console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def event(self, event: Event) -> None:
        style = "yellow" if event.type == "Warning" else "cyan"
        console.print(f"[{style}]{event.reason}[/{style}] {event.message}", highlight=False)

    def _rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for st in self.run.status.get("subtasks", []):
            job = self.run.jobs.get(st.get("rayJob", ""))
            phase = st.get("phase", "")
            detail = st.get("message", "")
            if job is not None and phase in ("Pending", "Running") and job.alive:
                p = job.progress
                if p:
                    filled = int(20 * p["step"] / max(p["total"], 1))
                    bar = "█" * filled + "░" * (20 - filled)
                    detail = f"{bar} step {p['step']}/{p['total']} loss {p['loss']:.3f} {p['tokens_per_s']:,.0f} tok/s ETA {p['eta']}"
                    if job.stage == "evaluating":
                        detail = "evaluating base vs adapter…"
                else:
                    detail = job.stage + "…"
                phase = "Running"
            rows.append((st["name"], phase, detail))
        return rows

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for name, phase, detail in self._rows():
            table.add_row(f"[bold]{name}[/bold]", phase, detail)
        return table

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            return
        for name, phase, detail in self._rows():  # plain mode: print a line when something changed
            line = f"{phase} {detail}"
            if self._last_plain.get(name) != line and phase == "Running":
                console.print(f"{name}: {line}", highlight=False)
            self._last_plain[name] = line


def _interval(ev: dict[str, Any], metric: str, which: str) -> list[float] | None:
    value = (ev.get("intervals") or {}).get(metric, {}).get(which)
    return list(value) if isinstance(value, list) and len(value) == 2 else None


def summary_rows(status: dict[str, Any], manifests: dict[str, dict[str, Any]], copies: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for st in status.get("subtasks", []):
        manifest = manifests.get(st["name"], {})
        ev = manifest.get("evaluation", {})
        metric = task_metric(manifest)
        base, adapter = ev.get("base", {}).get(metric), ev.get("adapter", {}).get(metric)
        lift = ev.get("lift", {}).get(metric)
        loss = (ev.get("base", {}).get("eval_loss"), ev.get("adapter", {}).get("eval_loss"))
        train_s = (manifest.get("timings") or {}).get("totalSeconds")
        rows.append({
            "subtask": st["name"], "phase": st.get("phase"), "attempts": st.get("attempts", 0), "metric": metric,
            "base": base, "adapter_score": adapter, "lift": lift,
            "intervals": {k: _interval(ev, metric, k) for k in ("base", "adapter", "lift", "general", "liftOverGeneral")},
            "general": (ev.get("general") or {}).get(metric), "general_model": ev.get("generalModel") or {},
            "versus_general": ev.get("versusGeneral", ""),
            "samples": ev.get("samples"), "threshold": (ev.get("verdictRule") or {}).get("threshold"),
            "verdict": _verdict(st, ev), "train_seconds": train_s, "eval_loss": loss,
            "outcome": st.get("outcome", ""), "run_id": st.get("runId", ""), "why": st.get("outcomeReason", ""),
            "promoted": st.get("promoted"), "promotion": st.get("promotion", ""),
            "adapter": str(copies.get(st["name"], st.get("adapter") or "")),
            "message": st.get("message", "") if st.get("phase") != "Succeeded" else "",
        })
    return rows


def task_metric(manifest: dict[str, Any]) -> str:
    """The metric that says whether the adapter is better at its task (not the loss)."""
    if "spec" not in manifest:
        return ""
    spec = TrainJobSpec.model_validate(manifest["spec"])
    return metrics_for(spec.evaluation, spec.taskType)[0].value


def _verdict(st: dict[str, Any], ev: dict[str, Any]) -> str:
    """The trainjob's verdict on the lift's 95% interval ("adapter wins" only when its
    lower bound is above the threshold)."""
    if st.get("phase") != "Succeeded":
        return "FAILED"
    return str(ev.get("verdict") or "no score")


def _score(v: float | None, signed: bool = False, interval: list[float] | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    if interval:
        lo, hi = interval
        text += f" [{lo:+.2f}, {hi:+.2f}]" if signed else f" [{lo:.2f}, {hi:.2f}]"
    return text


VERDICT_STYLE = {"adapter wins": "green", "FAILED": "red", "adapter worse": "red"}


def print_summary(rows: list[dict[str, Any]], phase: str, wall_seconds: float) -> None:
    out = Console(width=None if Console().is_terminal else 200)
    table = Table(title=f"AnyTaskTune: {phase} in {wall_seconds / 60:.1f} min (held-out split, base model vs adapter, "
                  "scores with 95% intervals)", title_justify="left")
    general = any(r["general_model"] for r in rows)
    columns = ("sub-task", "phase", "run", "metric", "base", "adapter", "lift", "verdict",
               *(("general",) if general else ()), "registry", "eval loss", "time")
    for col in columns:
        table.add_column(col, justify="right" if col in ("base", "adapter", "lift", "general", "time") else "left",
                         overflow="fold")
    for r in rows:
        style = VERDICT_STYLE.get(r["verdict"], "yellow")
        secs = r["train_seconds"]
        base_loss, adapter_loss = r["eval_loss"]
        loss = f"{base_loss:.2f} → {adapter_loss:.2f}" if base_loss is not None and adapter_loss is not None else "-"
        ci = r["intervals"]
        table.add_row(
            r["subtask"], r["phase"], f"{r['outcome'].lower() or '-'} {r['run_id']}".strip(), r["metric"] or "-", _score(r["base"], interval=ci["base"]),
            _score(r["adapter_score"], interval=ci["adapter"]), _score(r["lift"], True, ci["lift"]),
            f"[{style}]{r['verdict']}[/{style}]", *((_general_cell(r),) if general else ()), _registry_cell(r), loss,
            "reused" if r["outcome"] == "Reused" else f"{secs / 60:.1f} min" if secs else "-",
        )
    out.print(table)
    _print_footer(out, rows)


def _registry_cell(r: dict[str, Any]) -> str:
    """The promotion decision: the registry's active adapter, or kept without promotion."""
    if r["promoted"] is None:
        return "-"
    if r["outcome"] == "Pinned":
        return "[green]active (pinned)[/green]"
    return "[green]active[/green]" if r["promoted"] else "[yellow]not promoted[/yellow]"


def _general_cell(r: dict[str, Any]) -> str:
    info = r["general_model"]
    if not info:
        return "-"
    if info.get("status") != "Succeeded":
        return "failed"
    return _score(r["general"], interval=r["intervals"]["general"])


def _print_general(out: Console, rows: list[dict[str, Any]]) -> None:
    """The paper's comparison, one line per sub-task: the adapter against the general model."""
    for r in rows:
        info = r["general_model"]
        if not info:
            continue
        if info.get("status") != "Succeeded":
            out.print(f"{r['subtask']}: general model {info.get('model')} not compared — {info.get('message', '')} "
                      "(the training stands)", highlight=False)
            continue
        diff = (r["adapter_score"] or 0.0) - (r["general"] or 0.0)
        out.print(f"{r['subtask']}: adapter vs general model {info.get('model')}: "
                  f"{_score(diff, True, r['intervals']['liftOverGeneral'])} — {r['versus_general']}", highlight=False)


def _print_footer(out: Console, rows: list[dict[str, Any]]) -> None:
    folders = {str(Path(r["adapter"]).parent) for r in rows if r["phase"] == "Succeeded" and r["adapter"] and not r["adapter"].startswith("s3://")}
    for folder in sorted(folders):
        out.print(f"Adapters (PEFT) and their manifest.json: {folder}/<sub-task>/", highlight=False)
    for r in rows:
        if r["phase"] != "Succeeded":
            out.print(f"[red]{r['subtask']}[/red]: {r['message']}", highlight=False)
        elif r["why"]:
            out.print(f"{r['subtask']}: {r['outcome'].lower()} — {r['why']}" +
                      (f"; {r['promotion']}" if r["promotion"] else ""), highlight=False)
    trained = [r["subtask"] for r in rows if r["outcome"] == "Trained"]
    if any(r["outcome"] for r in rows):
        out.print(f"Trained {len(trained)} of {len(rows)} sub-tasks" + (f" ({', '.join(trained)})" if trained else
                  ": nothing changed") + "; the others reused or pinned a published run.", highlight=False)
    thresholds = sorted({r["threshold"] for r in rows if r["threshold"] is not None})
    bar = " / ".join(f"{t:g}" for t in thresholds) or "0"
    out.print(f"Verdict: \"adapter wins\" only when the lift's 95% lower bound (paired bootstrap over the same held-out "
              f"records) is above {bar}; \"inconclusive\" when the held-out set cannot tell; \"adapter worse\" when the "
              "upper bound is below 0.", highlight=False)
    _print_general(out, rows)
    wins = [r for r in rows if r["verdict"] == "adapter wins"]
    others = ", ".join(f"{r['subtask']}: {r['verdict']}" for r in rows if r["verdict"] != "adapter wins")
    out.print(f"{len(wins)}/{len(rows)} sub-task adapters beat the base model with 95% confidence"
              + (f" — not shown for {others}." if others else "."), highlight=False)

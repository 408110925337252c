"""The report's "Plan" section: what ``train --budget`` chose, the alternatives and why (from run.json)."""
from __future__ import annotations

import html


def _e(value) -> str:
    return html.escape(str(value))


def _seconds(value) -> str:
    return "—" if value is None else f"{float(value):.0f} s"


def plan_section(run: dict) -> str:
    """HTML for run.json's ``plan`` (empty for runs trained without --budget)."""
    plan = run.get("plan")
    if not plan:
        return ""
    chosen, measured = plan.get("chosen", {}), plan.get("measured", {})
    rows = []
    for r in plan.get("alternatives", []):
        is_chosen = all(r.get(k) == chosen.get(k) for k in ("model", "size", "freeze", "head", "epochs", "augment"))
        got = (f"{measured['top1']:.2%} on {measured.get('split')}" if is_chosen and measured.get("top1") is not None
               else "—")
        what = "head only" if r.get("freeze") == "backbone" else f"freeze {r.get('freeze')}"
        rows.append(f"<tr{' class=chosen' if is_chosen else ''}><td>{_e(r.get('model'))}@{_e(r.get('size'))}</td>"
                    f"<td>{_e(what)}</td><td>{_e(r.get('head'))}</td><td>{_e(r.get('epochs'))}</td>"
                    f"<td>{_e(r.get('augment'))}</td><td>{r.get('expected', 0):.2%}</td><td>{_seconds(r.get('seconds'))}</td>"
                    f"<td>{_e(got)}</td><td>{_e(r.get('why'))}</td></tr>")
    ranked = plan.get("rank", {})
    reasons = "".join(f"<li>{_e(line)}</li>" for line in plan.get("reasons", []))
    stopped = f"<p class=note>Training stopped {_e(plan['stopped'])}.</p>" if plan.get("stopped") else ""
    tta = plan.get("tta")
    if tta:
        stopped += f"<p class=note>Test-time augmentation: {_e(tta.get('chosen'))} ({_e(tta.get('why'))})" + (
            f"; test top-1 with it {tta['test_top1']:.2%}" if "test_top1" in tta else "") + ".</p>"
    return (f"<h2>Plan</h2><p class=sub>Chosen by <code>train --budget</code> in "
            f"{_seconds(plan.get('spent_before_training_s'))} of a {_seconds(plan.get('budget_s'))} budget: "
            f"{len(ranked.get('rows', []))} candidates ranked on {ranked.get('sample', '?')} images "
            f"({_e(ranked.get('mode', '?'))}); {_e(plan.get('pilot', ''))}. Expected accuracies are held-out accuracies "
            f"on that sample; times are predicted from the speeds measured on this machine.</p><ul>{reasons}</ul>"
            f"{stopped}<table><tr><th>candidate</th><th>trains</th><th>head</th><th>epochs</th><th>augment</th>"
            f"<th>expected</th><th>predicted time</th><th>measured</th><th>expected from</th></tr>{''.join(rows)}</table>"
            f"<p class=sub>Measured: {_seconds(measured.get('seconds_to_scoring'))} from the start of the command to the "
            f"end of scoring, {measured.get('epochs_run', '—')} epochs run.</p>")

"""The report of ``bench/speed.py``: plain text or a markdown section for RESULTS.md."""

from __future__ import annotations

from typing import Any


def _mib(mem: dict[str, Any], kind: str) -> str:
    peak, inc = mem[f"{kind}_peak_mib"], mem[f"{kind}_increase_mib"]
    return "n/a" if peak is None else f"{peak:.0f} (+{inc:.1f})"


RATIO_LABELS = {"c_over_a_step_time": "(c)/(a) step time",
                "d_over_e_steps_per_s": "(d)/(e) steps/s",
                "g_over_h_step_time": "(g)/(h) step time",
                "g_over_e_steps_per_s": "(g)/(e) steps/s (TextBrewer at equal precision: fp32)",
                "g_over_f_steps_per_s": "(g)/(f) steps/s (TextBrewer at equal precision: the "
                                        "run's autocast and optimizer)",
                "d_over_f_steps_per_s": "(d)/(f) steps/s",
                "i_over_h_step_time": "(i)/(h) step time",
                "g_over_i_step_time": "(g)/(i) step time"}


def _spread(ratio: dict[str, Any]) -> str:
    """The ratio within each interleaved round, when there was more than one."""
    rounds = ratio.get("rounds") or []
    return (f"; within each round: {', '.join(f'{v:.2f}' for v in rounds)}"
            if len(rounds) > 1 else "")


def _ratio_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for key, r in result["ratios"].items():
        label = RATIO_LABELS[key]
        if r["target"] == "(information)":
            if r["value"] is not None:
                lines.append(f"{label}: {r['value']:.2f} ({r['note']}; information, no "
                             f"target{_spread(r)})")
            continue
        if r["value"] is None:
            lines.append(f"{label}: n/a (needs cases {r['needs']}; target {r['target']})")
        else:
            lines.append(f"{label}: {r['value']:.2f} (target {r['target']}: "
                         f"{'met' if r['met'] else 'NOT met'}{_spread(r)})")
    return lines


def _rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cuda = result["meta"]["device"].startswith("cuda")
    header = ["case", "s/step", "steps/s", "time vs (a)", "tokens/s", "peak RSS MiB (+case)"]
    if cuda:
        header.append("peak CUDA MiB (+case)")
    base = next((c["s_per_step"] for c in result["cases"] if c["case"] == "a"), None)
    rows = []
    for c in result["cases"]:
        row = [f"({c['case']}) {c['name']}", f"{c['s_per_step']:.4f}",
               f"{c['steps_per_s']:.2f}",
               "n/a" if base is None else f"{c['s_per_step'] / base:.2f}",
               f"{c['tokens_per_s']:,.0f}", _mib(c["memory"], "rss")]
        if cuda:
            row.append(_mib(c["memory"], "cuda"))
        rows.append(row)
    return header, rows


GROUP_CASES = {"kd": "(a)-(c)", "mmd": "(d)-(i)"}


def _build_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for b in result["builds"]:
        logits = b["teacher_logits"]
        logits = logits if isinstance(logits, str) else ", ".join(
            f"{k} {v}" for k, v in logits.items())
        lines.append(f"build {GROUP_CASES[b['group']]}: {b['seconds']:.1f} s, peak RSS "
                     f"{_mib(b['memory'], 'rss')} MiB; teacher {b['teacher_origin']}, "
                     f"teacher logits: {logits}; student {b['student']}; "
                     f"pairs {', '.join(b['pairs']) or 'none'}")
        f = b.get("teacher_features")
        if f:
            lines.append(f"teacher features {GROUP_CASES[b['group']]}: {f['source']}"
                         f"{' (' + f['reason'] + ')' if f['reason'] else ''}; {f['dtype']}, "
                         f"{f['bytes_per_token']:,.0f} B/token, {f['bytes'] / 1e9:.2f} GB for "
                         f"{f['tokens']:,} tokens; hidden states {f['hidden_layers']}, "
                         f"attention maps {f['attention_layers'] or 'none'}; teacher pass "
                         f"{f['seconds']:.0f} s")
    return lines


def _precision_note(m: dict[str, Any]) -> str:
    """Which kind of CPU the rows are for."""
    if not m["device"].startswith("cpu"):
        return m["precision"]
    if not m.get("cpu_bf16"):
        return ("fp32 rows: this CPU has no native bf16 (AVX512-BF16/AMX), so the bf16 rows "
                "are not measured here")
    if m["precision"] == "fp32":
        return "fp32 rows, forced (--precision fp32) on a CPU with native bf16"
    return f"bf16 rows on a CPU with native bf16 ({m['precision']})"


def _header(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's header lines as (label, text)."""
    m = result["meta"]
    mach = m["machine"]
    rounds = f", median of {m['repeat']} interleaved rounds" if m["repeat"] > 1 else ""
    return [
        ("date", m["date"]),
        ("machine", f"{mach['cpu']}, {mach['cores']} cores, "
                    f"{'GPU ' + mach['gpu'] if mach['gpu'] else 'no GPU'}"),
        ("versions", f"torch {mach['torch']}, transformers {mach['transformers']}, "
                     f"textbrewer {mach['textbrewer'] or 'not installed'}, "
                     f"python {mach['python']}"),
        ("threads", f"{mach['threads']} (OMP_NUM_THREADS={mach['omp_num_threads'] or 'unset'})"),
        ("steps", f"{m['steps']} timed after {m['warmup']} warm-up{rounds}; batch size "
                  f"{m['batch_size']} x accumulation {m['grad_accum_steps']}; "
                  f"device {m['device']}, {m['precision']}"),
        ("precision", _precision_note(m)),
        ("memory", m.get("memory") or "n/a"),
        ("command", m["command"]),
        *((f"config {GROUP_CASES[g]}", " ".join(o)) for g, o in m["overrides"].items()),
    ]


def format_text(result: dict[str, Any]) -> str:
    """The plain-text report."""
    lines = [f"distillkit speed benchmark ({'real' if result['meta']['real'] else 'tiny'} "
             "models)"]
    lines += [f"{label}: {text}" for label, text in _header(result)] + _build_lines(result)
    header, rows = _rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = [str.ljust] + [str.rjust] * (len(header) - 1)
    table = ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True))
             for r in [header, *rows]]
    lines += ["", table[0], "-" * len(table[0]), *table[1:], ""]
    lines += result["skipped"] + _ratio_lines(result)
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """A markdown section, ready to paste into ``bench/RESULTS.md``."""
    m = result["meta"]
    lines = [f"### {'Real' if m['real'] else 'Tiny'} models, {m['date']}", ""]
    lines += [f"- {label}: `{text}`" if label in ("command",) or label.startswith("config")
              else f"- {label}: {text}" for label, text in _header(result)]
    lines += [f"- {line}" for line in _build_lines(result)] + [""]
    header, rows = _rows(result)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", *(f"{line}  " for line in result["skipped"] + _ratio_lines(result))]
    return "\n".join(lines).rstrip()

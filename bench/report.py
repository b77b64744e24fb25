"""The benchmark's table: one row per number, with its baseline, ratio, target and verdict.

The targets are those of SPEC section 7 and issue 7 ("What must show it"); a `FAIL` is a
finding, not an error.
"""

from __future__ import annotations

import math
from typing import Any

from context import LAG_TARGET_MS
from harness import ratio
from phase_latency import CRM_SLOW_MS

RECOVERY_TARGET_SECONDS = 10.0
# Issue 16: synced writes/s against the seed's design, and write throughput with sync on
# against sync off, by database.
SYNCED_OVER_SEED_TARGET = 1.5
SYNC_ON_OFF_TARGETS = {"sqlite": 0.8, "postgresql": 0.7}


def _fmt(value: float, unit: str, digits: int = 1) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} {unit}".rstrip()


def build_table(metrics: dict[str, Any], kind: str = "sqlite") -> list[dict[str, str]]:
    """The rows of one database's run (`kind`: sqlite or postgresql)."""
    rows: list[dict[str, str]] = []

    def row(metric: str, value: str, baseline: str, r: float, target: str, verdict: str) -> None:
        rows.append(
            {
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "ratio": _fmt(r, "", 3),
                "target": target,
                "verdict": verdict,
            }
        )

    def from_spawn(number: str, phase: dict[str, Any], rate: float, baseline: float) -> None:
        """The record row under a drain timed from `/health`: the rate from the spawn."""
        spawn_row(number, phase["readyAfterSeconds"], rate, baseline, phase["ratioFromSpawn"])

    def spawn_row(number: str, start_up: float, rate: float, baseline: float, ratio: float) -> None:
        row(
            f"{number} the same from spawn (start-up {start_up:.2f} s)",
            _fmt(rate, "/s"),
            _fmt(baseline, "/s"),
            ratio,
            "-",
            "-",
        )

    def measured(key: str) -> dict[str, Any] | None:
        data: dict[str, Any] = metrics.get(key, {})
        if not data or data.get("skipped"):
            return None
        if data.get("error"):
            row(f"{key}: error", "", "", math.nan, "", "not measured")
            return None
        return data

    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAIL"

    if t := measured("throughput"):
        on, off, seed = t["syncOn"], t["syncOff"], t["seed"]
        row(
            f"1 synced writes/s, crm-sync / seed's design ({t['writers']} writers)",
            _fmt(on["syncedPerSecond"], "/s"),
            _fmt(seed["syncedPerSecond"], "/s"),
            t["syncedOverSeed"],
            f">= {SYNCED_OVER_SEED_TARGET} (issue 16; 1.2 issue 7)",
            verdict(t["syncedOverSeed"] >= SYNCED_OVER_SEED_TARGET),
        )
        row(
            "1 service CPU per synced write, crm-sync / seed's design",
            _fmt(on["cpuMsPerWrite"], "ms", 2),
            _fmt(seed["cpuMsPerWrite"], "ms", 2),
            t["cpuOverSeed"],
            "<= 1.0 (issue 7)",
            verdict(t["cpuOverSeed"] <= 1.0),
        )
        row(
            "1 write throughput, sync on / off",
            _fmt(on["perSecond"], "/s"),
            _fmt(off["perSecond"], "/s"),
            t["ratio"],
            f">= {SYNC_ON_OFF_TARGETS[kind]} (issue 16; 1.0 = sync is free)",
            verdict(t["ratio"] >= SYNC_ON_OFF_TARGETS[kind]),
        )
        row(
            "1 service CPU per write, sync on / off",
            _fmt(on["cpuMsPerWrite"], "ms", 2),
            _fmt(off["cpuMsPerWrite"], "ms", 2),
            t["cpuOverOff"],
            "-",
            "-",
        )
        if alone := t.get("serviceAlone"):
            row(
                "1 the same, the service on a core of its own (for the record; synced after "
                f"{alone['syncOn']['syncedSeconds']:.1f} s)",
                _fmt(alone["syncOn"]["perSecond"], "/s"),
                _fmt(alone["syncOff"]["perSecond"], "/s"),
                alone["ratio"],
                "-",
                "-",
            )
    if lat := measured("latency"):
        for pct in ("p50", "p99"):
            slow = lat["slow"]["latencyMs"][pct]
            row(
                f"2 write latency {pct}, CRM +{CRM_SLOW_MS} ms / healthy",
                _fmt(slow, "ms"),
                _fmt(lat["healthy"]["latencyMs"][pct], "ms"),
                lat[f"ratio{pct.upper()}"],
                f"near 1; < {CRM_SLOW_MS} ms (G4)",
                verdict(slow < CRM_SLOW_MS),
            )
    if d := measured("drain"):
        row(
            f"3 drain rate of {d['backlog']} / CRM max ({d['retryConcurrency']} conc."
            f"{', before + after' if 'before' in d['crmMax'] else ''}), from /health",
            _fmt(d.get("perSecondFromReady", d["perSecond"]), "/s"),
            _fmt(d["crmMax"]["perSecond"], "/s"),
            d["ratio"],
            ">= 0.9 (issue 7)",
            verdict(d["ratio"] >= 0.9),
        )
        if "ratioFromSpawn" in d:
            from_spawn("3", d, d["perSecond"], d["crmMax"]["perSecond"])
    if sc := measured("scaleOut"):
        for key, crm, target in (
            ("remote", "CRM +{ms} ms", "> 1 (issue 7)"),
            ("local", "CRM local", "(CPU-bound)"),
        ):
            run = sc[key]
            row(
                f"8 drain of {sc['backlog']}, three processes / one, "
                + crm.format(ms=run["crmLatencyMs"]),
                _fmt(run["three"]["perSecond"], "/s"),
                _fmt(run["one"]["perSecond"], "/s"),
                run["ratio"],
                target,
                verdict(run["ratio"] > 1.0) if key == "remote" else "",
            )
    if rl := measured("rateLimit"):
        row(
            f"9 drain of {rl['backlog']} / a CRM limit of {rl['limitPerSecond']} calls/s"
            f" ({rl['dead']} dead)",
            _fmt(rl["perSecond"], "/s"),
            _fmt(rl["limitPerSecond"], "/s"),
            rl["ratio"],
            ">= 0.9, none dead (issue 7)",
            verdict(rl["ratio"] >= 0.9 and rl["dead"] == 0),
        )
    if bt := measured("batches"):
        row(
            f"10 drain of {bt['batched']['backlog']}, batches of {bt['batchSize']} / one per call",
            _fmt(bt["batched"]["perSecond"], "/s"),
            _fmt(bt["onePerCallPerSecond"], "/s"),
            bt["ratio"],
            ">= 3 (issue 16)",
            verdict(bt["ratio"] >= 3),
        )
        lim = bt["limited"]
        row(
            f"10 batched drain at a CRM limit of {bt['limitPerSecond']} calls/s"
            f" ({lim['dead']} dead, {lim['callsAnswered429']} calls refused)",
            _fmt(lim["perSecond"], "/s"),
            "800 /s",
            lim["perSecond"] / 800,
            ">= 800 customers/s, none dead (issue 16)",
            verdict(lim["perSecond"] >= 800 and lim["dead"] == 0),
        )
    if hs := measured("hubspot"):
        row(
            f"11 HubSpot drain of {hs['backlog']} at {hs['limitPerSecond']} calls/s x"
            f" {hs['batchSize']} ({hs['dead']} dead, {100 * hs['refusedShare']:.2f} % refused),"
            " from /health",
            _fmt(hs["perSecond"], "/s"),
            _fmt(hs["limitPerSecond"] * hs["batchSize"], "/s"),
            hs["ratio"],
            ">= 0.8, none dead, <= 1 % refused (issue 17)",
            verdict(hs["ratio"] >= 0.8 and hs["dead"] == 0 and hs["refusedShare"] <= 0.01),
        )
        if "ratioFromSpawn" in hs:
            from_spawn("11", hs, hs["perSecondFromSpawn"], hs["limitPerSecond"] * hs["batchSize"])
    if sf := measured("salesforce"):
        row(
            f"12 Salesforce drain of {sf['backlog']}, collections of {sf['batchSize']} / one"
            f" per call ({sf['dead']} dead)",
            _fmt(sf["perSecond"], "/s"),
            _fmt(sf["onePerCallPerSecond"], "/s"),
            sf["ratio"],
            ">= 3, none dead (issue 18)",
            verdict(sf["ratio"] >= 3 and sf["dead"] == 0),
        )
    if sk := measured("sink"):
        one = sk["oneCallPerEvent"]["perSecond"]
        row(
            f"13 sink: {sk['events']} events to the HubSpot face, batches of {sk['batchSize']}"
            " / one call per event (mock API), from the first record",
            _fmt(sk["hubspot"]["perSecond"], "/s"),
            _fmt(one, "/s"),
            sk["ratio"],
            ">= 3 (issue 19)",
            verdict(sk["ratio"] >= 3),
        )
        if "ratioFromSpawn" in sk:
            batched, one_call = sk["hubspot"], sk["oneCallPerEvent"]
            spawn_row(
                "13",
                batched["firstRecordSeconds"],
                batched["perSecondFromSpawn"],
                one_call["perSecondFromSpawn"],
                sk["ratioFromSpawn"],
            )
    if rec := measured("recovery"):
        delay = rec["firstDeliverySeconds"]
        row(
            "4 CRM back -> first delivered retry",
            _fmt(delay, "s", 2),
            _fmt(rec["retryIntervalSeconds"], "s (interval)", 0),
            rec["ratio"],
            f"< {RECOVERY_TARGET_SECONDS:.0f} s (G7)",
            verdict(delay < RECOVERY_TARGET_SECONDS),
        )
    if lat := measured("latency"):
        lag = lat["lag"]
        rate = f"{lag['ratePerSecond']:.0f} writes/s"
        row(
            f"5 sync lag p50 ({rate})",
            _fmt(lag["p50Ms"], "ms"),
            "100 ms",
            lag["p50Ms"] / 100,
            "-",
            "-",
        )
        row(
            f"5 sync lag p99 ({rate}, half the sync-off capacity)",
            _fmt(lag["p99Ms"], "ms"),
            _fmt(LAG_TARGET_MS, "ms", 0),
            lag["ratioP99"],
            f"<= {LAG_TARGET_MS:.0f} ms (G4, issue 7)",
            verdict(lag["p99Ms"] <= LAG_TARGET_MS and lag["unmatched"] == 0),
        )
    if d := measured("drain"):
        mem = d["memory"]
        row(
            f"6 peak RSS draining {d['backlog']} / idle",
            _fmt(mem["peakRssMiB"], "MiB"),
            _fmt(mem["idleRssMiB"], "MiB"),
            mem["ratio"],
            "-",
            "-",
        )
        if big := measured("bigDrain"):
            big_mem = big["memory"]
            r = ratio(big_mem["peakRssMiB"], mem["peakRssMiB"])
            row(
                f"6 peak RSS draining {big['backlog']} / draining {d['backlog']}",
                _fmt(big_mem["peakRssMiB"], "MiB"),
                _fmt(mem["peakRssMiB"], "MiB"),
                r,
                "<= 1.2 (issue 7)",
                verdict(r <= 1.2),
            )
    if k := measured("kafka"):
        http = metrics.get("throughput", {}).get("syncOn", {}).get("perSecond", math.nan)
        row(
            f"7 Kafka write throughput / HTTP, sync on ({k['writers']} writers)",
            _fmt(k["throughput"]["perSecond"], "/s"),
            _fmt(http, "/s"),
            ratio(k["throughput"]["perSecond"], http),
            "-",
            "-",
        )
        http_lag = metrics.get("latency", {}).get("lag", {})
        for pct in ("p50", "p99"):
            value = k["lag"][f"{pct}Ms"]
            baseline = http_lag.get(f"{pct}Ms", math.nan)
            # Issue 19: p99 at half the sync-off capacity, the rate of phase 5, <= 100 ms.
            judged = pct == "p99"
            row(
                f"7 Kafka sync lag {pct}, to the CRM's apply / HTTP",
                _fmt(value, "ms"),
                _fmt(baseline, "ms"),
                ratio(value, baseline),
                f"<= {LAG_TARGET_MS:.0f} ms (issue 19)" if judged else "-",
                verdict(value <= LAG_TARGET_MS and k["lag"]["unmatched"] == 0) if judged else "-",
            )
    return rows


def print_table(rows: list[dict[str, str]]) -> None:
    headers = {
        "metric": "metric",
        "value": "value",
        "baseline": "baseline",
        "ratio": "ratio",
        "target": "target",
        "verdict": "verdict",
    }
    widths = {k: max(len(headers[k]), *(len(r[k]) for r in rows)) for k in headers}
    line = "  ".join(f"{headers[k]:<{widths[k]}}" for k in headers)
    print()
    print(line.rstrip())
    print("  ".join("-" * widths[k] for k in headers))
    for r in rows:
        print("  ".join(f"{r[k]:<{widths[k]}}" for k in headers).rstrip())
    print()


def markdown_table(rows: list[dict[str, str]]) -> str:
    """The table as GitHub Markdown, for bench/README.md."""
    keys = ("metric", "value", "baseline", "ratio", "target", "verdict")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"

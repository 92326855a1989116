"""The table `make bench` prints: every workload per target (DIRECT, RUNEWARP and, where
measured, ssh -R), the ratios to DIRECT, issue 20's targets with met / not met, and whether
Runewarp beats ssh -R on each row."""

import math
import os
import statistics

import fleetbench
import quicbench
import sshpeer
import workersbench
from settings import (IDLE_CONNS, LIMITS, RATE_PROCS, RATE_THREADS, REPEATS, RTT_MB, RTT_ONE_WAY_MS,
                      RTT_REPEATS, RTT_SECONDS, RTT_SYSCTLS, SEQ_PER_REPEAT, STREAMS, STREAMS_CONNS,
                      STREAMS_INFLIGHT, STREAMS_PROCS, STREAMS_SOURCES, TARGETS)


def pct(values, p):
    """Nearest-rank percentile; NaN for no data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cell(values, fmt="{:.1f}"):
    if isinstance(values, str):
        return values
    if isinstance(values, (int, float)):
        return fmt.format(values)
    if not values:
        return "-"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" [{fmt.format(min(values))}–{fmt.format(max(values))}]"
    return text


def med(values):
    if isinstance(values, (str, int, float)):
        return values
    return statistics.median(values) if values else None


def ratio(dv, rv):
    d, r = med(dv), med(rv)
    return r / d if isinstance(d, (int, float)) and isinstance(r, (int, float)) and d else None


def added_latency(res, name="runewarp"):
    s = res["seq"]
    return (pct(s[name]["latencies_ms"], 50) - pct(s["direct"]["latencies_ms"], 50),
            pct(s[name]["latencies_ms"], 99) - pct(s["direct"]["latencies_ms"], 99))


def row(metric, values, fmt, better=None, target="", met=None):
    """One line of the table: `values` per target name (direct, runewarp, ssh); `better`
    ("higher"/"lower") says which way Runewarp beats ssh -R; `met` is None without a target."""
    return {"metric": metric, "values": values, "fmt": fmt, "better": better, "target": target,
            "met": met}


def build_rows(res):
    """The table's rows (see row()): the workloads of every target, issue 20's targets and
    issue 6's guard rails (streams, RTT) beside them."""
    b, r, s, m = res["bulk"], res["rate"], res["seq"], res["idle"]
    d, w = "direct", "runewarp"
    cpu_gb1 = {n: b[n]["cpu_single"] / (b[n]["bytes_single"] / 1e9) for n in b}
    cpu_gb8 = {n: b[n]["cpu_multi"] / (b[n]["bytes_multi"] / 1e9) for n in b}
    sys_gb1 = {n: b[n]["sys_single"] / (b[n]["bytes_single"] / 1e9) for n in b}
    cpu_conn = {n: 1000 * r[n]["cpu_s"] / max(1, r[n]["conns"]) for n in r}
    _added50, added99 = added_latency(res)

    def each(phase, key):
        return {n: v[key] for n, v in phase.items()}

    rows = [
        row("bulk 1 stream, MB/s", each(b, "single"), "{:.0f}", "higher", TARGETS["bulk1"],
            (ratio(b[d]["single"], b[w]["single"]) or 0) >= LIMITS["bulk1"]),
        row(f"bulk {STREAMS} streams aggregate, MB/s", each(b, "multi"), "{:.0f}", "higher"),
        row(f"new conns/s, {RATE_PROCS * RATE_THREADS} in flight", each(r, "rates"), "{:.0f}",
            "higher", TARGETS["rate"], (ratio(r[d]["rates"], r[w]["rates"]) or 0) >= LIMITS["rate"]),
        row("  latency p50 @50, ms", each(r, "p50s"), "{:.2f}", "lower"),
        row("  latency p99 @50, ms", each(r, "p99s"), "{:.2f}", "lower"),
        row("sequential conn p50, ms", each(s, "p50s"), "{:.2f}", "lower"),
        row("sequential conn p99, ms", each(s, "p99s"), "{:.2f}", "lower", TARGETS["seq_p99"],
            added99 <= LIMITS["seq_p99"]),
        row("idle conn memory, KiB/conn (*)", each(m, "kib_per_conn"), "{:.1f}", "lower",
            TARGETS["idle"], m[w]["kib_per_conn"] <= LIMITS["idle"]),
        row("CPU s per GB, bulk 1 stream (*)", cpu_gb1, "{:.2f}", "lower", TARGETS["cpu_gb"],
            cpu_gb1[w] <= LIMITS["cpu_gb"]),
        row("  of which kernel (system) time", sys_gb1, "{:.2f}"),
        row(f"CPU s per GB, bulk {STREAMS} streams (*)", cpu_gb8, "{:.2f}", "lower",
            TARGETS["cpu_gb"], cpu_gb8[w] <= LIMITS["cpu_gb"]),
        row("CPU ms per conn, conn-rate test (*)", cpu_conn, "{:.3f}", "lower", TARGETS["cpu_conn"],
            cpu_conn[w] <= LIMITS["cpu_conn"]),
    ]
    st = res["streams"]
    if all(n in st for n in (d, w)):
        rw = st[w]
        rows += [
            row(f"{STREAMS_CONNS:,} concurrent streams: open / errors",
                {n: f"{st[n]['opened']} / {st[n]['errors_total']}" for n in (d, w)}, "",
                target=TARGETS["streams"] + ", 1 Tunnel conn",
                met=rw["opened"] == STREAMS_CONNS and rw["errors_total"] == 0
                and rw["new_tunnel_connections"] == 0),
            row("  then 1 GET on each: ok", {n: f"{st[n]['get_ok']}/{st[n]['opened']}" for n in (d, w)},
                ""),
            row("  RSS with all open, MiB (*)", {n: st[n]["rss_peak_kib"] / 1024 for n in (d, w)},
                "{:.0f}"),
            row("  time to open all, s", {n: st[n]["open_s"] for n in (d, w)}, "{:.1f}"),
        ]
    else:
        rows.append(row(f"{STREAMS_CONNS:,} concurrent streams", {d: "-", w: st.get("failed", "not run")},
                        "", target=TARGETS["streams"], met=False))
    px = res.get("proxy") or {}
    if all(n in px for n in (d, w)):
        rows += [
            row("TCP via runewarp proxy, 1 stream MB/s", each(px, "mb_s"), "{:.0f}"),
            row("TCP via runewarp proxy, conn setup p50 ms", each(px, "latencies_ms"), "{:.2f}"),
        ]
    qc = {n: v for n, v in (res.get("quic") or {}).items() if n in (d, w)}
    if len(qc) == 2:
        rows += [
            row(f"QUIC datagrams/s, {quicbench.QUIC_FLOWS} flows x {quicbench.QUIC_WINDOW} in flight",
                each(qc, "rates"), "{:.0f}"),
            row("  datagram round trip p50, ms", each(qc, "p50_ms"), "{:.3f}"),
            row("  datagram round trip p99, ms", each(qc, "p99_ms"), "{:.3f}"),
            row("  CPU us per datagram (*)", each(qc, "cpu_us_per_datagram"), "{:.1f}"),
        ]
    rt = res["rtt"]
    label = f"1 stream over {2 * RTT_ONE_WAY_MS} ms RTT link, MB/s"
    if "runewarp" in rt and rt["runewarp"]["mb_s"]:
        rows.append(row(label + ("" if "netem_error" not in rt["link"] else " (+)"),
                        {d: rt[d]["mb_s"], w: rt[w]["mb_s"]}, "{:.1f}", target=TARGETS["rtt"],
                        met=med(rt[w]["mb_s"]) >= LIMITS["rtt"] and not rt[w]["errors"]))
    else:
        rows.append(row(label, {d: "-", w: "SKIPPED"}, "", target=TARGETS["rtt"]))
        rt.setdefault("why_not_measured", rt.get("skipped") or rt.get("failed") or "not run")
    return rows


def beats(line, rival=sshpeer.NAME):
    """Whether Runewarp's median beats `rival`'s on this row: True, False, or None."""
    rw, other = med(line["values"].get("runewarp")), med(line["values"].get(rival))
    if line["better"] is None or not all(isinstance(v, (int, float)) for v in (rw, other)):
        return None
    return rw > other if line["better"] == "higher" else rw < other


def print_table(rows, res):
    ssh = any(sshpeer.NAME in line["values"] for line in rows)
    header = ["metric", f"DIRECT ({res['backend']['kind']})", "THROUGH RUNEWARP", "rw/direct"]
    header += [sshpeer.LABEL.upper(), "ssh/direct"] if ssh else []
    header += ["target (issue 20)", "met"] + (["beats ssh -R"] if ssh else [])
    numeric = 6 if ssh else 4    # right-aligned columns: the figures and ratios
    word = {True: "yes", False: "NO", None: "-"}
    lines = []
    for line in rows:
        values, fmt = line["values"], line["fmt"]
        dv, rv = values.get("direct", "-"), values.get("runewarp", "-")
        cells = [line["metric"], cell(dv, fmt), cell(rv, fmt),
                 f"{ratio(dv, rv):.2f}x" if ratio(dv, rv) is not None else "-"]
        if ssh:
            sv = values.get(sshpeer.NAME, "-")
            cells += [cell(sv, fmt), f"{ratio(dv, sv):.2f}x" if ratio(dv, sv) is not None else "-"]
        cells += [line["target"], word[line["met"]] if line["target"] else "-"]
        if ssh:
            cells.append(word[beats(line)])
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    sep = "  "
    print()
    print(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(sep.join("-" * w for w in widths))
    for cells in lines:
        print(sep.join([cells[0].ljust(widths[0]),
                        *(v.rjust(w) for v, w in zip(cells[1:numeric], widths[1:numeric], strict=True)),
                        *(v.ljust(w) for v, w in zip(cells[numeric:], widths[numeric:], strict=True))]
                       ).rstrip())
    added50, added99 = added_latency(res)
    print(f"\nadded latency per new connection (sequential, {REPEATS * SEQ_PER_REPEAT} conns each,"
          f" pooled): p50 +{added50:.2f} ms, p99 +{added99:.2f} ms"
          + (" through Runewarp; p50 +{:.2f} ms, p99 +{:.2f} ms through ssh -R".format(
              *added_latency(res, sshpeer.NAME)) if sshpeer.NAME in res["seq"] else ""))
    sp = res.get("ssh") or {}
    if ssh:
        print(f"ssh -R: {sp['version']}, cipher {sp['cipher']}; sshd on 127.0.0.1 plays the Server"
              " (the Visitor connects to its remote-forwarded port), `ssh -N -R` the Client; CPU and"
              " memory: sshd, its session processes and ssh.")
    elif sp.get("skipped"):
        print(f"ssh -R column not measured: {sp['skipped']}")
    for text in workersbench.report(res.get("workers") or {}):
        print(text)
    for text in fleetbench.report(res.get("fleet") or {}):
        print(text)
    print("median [min–max over repeats]; bulk/conn-rate/sequential: "
          f"{REPEATS} repeats; idle memory: one run of {IDLE_CONNS} connections;"
          f" concurrent streams: one run; {2 * RTT_ONE_WAY_MS} ms RTT: {RTT_REPEATS} repeats.")
    print("(*) DIRECT = the backend's processes; RUNEWARP = Server + Client only (backend"
          " excluded): the ratio compares Runewarp's own cost with the backend's.")
    qc = res.get("quic") or {}
    if "runewarp" in qc:
        d, w = qc["direct"], qc["runewarp"]
        print(f"QUIC: added datagram round trip p50 +{w['p50_ms'] - d['p50_ms']:.3f} ms, p99"
              f" +{w['p99_ms'] - d['p99_ms']:.3f} ms ({quicbench.QUIC_ROUND_TRIPS} sequential"
              f" {quicbench.PAYLOAD}-byte datagrams on one flow); every flow opens with a sealed"
              " Initial; CPU per datagram counts each direction (DIRECT: the echo backend).")
    st = res["streams"]
    if "runewarp" in st:
        rw = st["runewarp"]
        print(f"concurrent streams: {STREAMS_PROCS} selector-based openers, <= {STREAMS_INFLIGHT}"
              f" handshakes in flight each, Visitors from {STREAMS_SOURCES} loopback addresses;"
              f" Server + Client held {rw['fds_open'] - rw['fds_before']:+d} file descriptors and"
              f" {(rw['rss_open_kib'] - rw['rss_before_kib']) / max(1, rw['opened']):.1f} KiB"
              f" per stream; Tunnel connections opened meanwhile: {rw['new_tunnel_connections']}.")
    rt = res["rtt"]
    if "link" in rt and "runewarp" in rt:
        line = rt["link"].get("delayline_stats", {})
        print(f"{2 * RTT_ONE_WAY_MS} ms RTT: {rt['link']['method']}; measured RTT"
              f" {rt['rtt_ms_measured']:.1f} ms; {', '.join(f'{k}={v!r}' for k, v in RTT_SYSCTLS.items())}"
              f" in both namespaces; one download per run, {RTT_MB} MiB or --max-time {RTT_SECONDS:g} s.")
        if "netem_error" in rt["link"]:
            print(f"(+) {rt['link']['netem_error']} -- frames late > 2 ms: {line.get('late_over_2ms')}"
                  f" of {line.get('frames')}, worst {line.get('late_ms_max', 0):.1f} ms.")
    elif "why_not_measured" in rt:
        print(f"{2 * RTT_ONE_WAY_MS} ms RTT link not measured: {rt['why_not_measured']}")
    busiest = max(res["foreign_load"].items(), key=lambda kv: kv[1]["foreign_cores"])
    print(f"load generators, curl, backend and Runewarp share {os.cpu_count()} CPUs; other processes"
          f" used up to {busiest[1]['foreign_cores']:.2f} cores (phase {busiest[0]})"
          + (" -- numbers are NOISY" if busiest[1]["foreign_cores"] > 0.25 else "") + ".")
    return added50, added99

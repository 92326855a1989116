"""`runewarp server|client status`: the metrics listener's /status document as tables.

Pure: a decoded document (docs/usage.md#monitoring) and the current time in, text out;
fetching it is the CLI's job.  Cells come from another process, so every character
that is not printable is escaped: the document cannot drive the terminal.
"""

DAY = 86400


def render(document, now):
    """The human view of a /status `document`; `now` is a Unix time (certificate days)."""
    role = document.get("role")
    parts = [_heading(document)]
    if role == "server":
        parts += _server(document)
    elif role == "client":
        parts += _client(document)
    parts.append(_certificates(document.get("certificates") or [], now))
    return "\n\n".join(parts) + "\n"


def _heading(doc):
    ready = {True: "ready", False: "NOT READY"}.get(doc.get("ready"), "readiness unknown")
    line = f"Runewarp {_cell(doc.get('role') or '?')} {_cell(doc.get('version') or '?')}: {ready}"
    if isinstance(doc.get("uptime_seconds"), int | float):
        line += f", up {duration(doc['uptime_seconds'])}"
    if isinstance(doc.get("workers"), int):
        line += f", {doc['workers']} workers"
    if doc.get("config"):
        line += f"\nConfig: {_cell(doc['config'])}"
    return line


def _server(doc):
    tunnels = doc.get("tunnels") or []
    members = [(tunnel, member) for tunnel in tunnels for member in tunnel.get("members") or []]
    return [
        "Tunnels\n" + table(
            ("TUNNEL", "PUBLIC HOSTNAMES", "POOL MEMBERS", "ACTIVE STREAMS"),
            [(_of_worker(t), ", ".join(t.get("public_hostnames") or []),
              len(t.get("members") or []), t.get("active_streams")) for t in tunnels],
            empty="(no Tunnels)"),
        "Pool members\n" + table(
            ("TUNNEL", "CLIENT IDENTITY", "INSTANCE", "PEER", "SERVES", "CONNECTED SINCE",
             "ACTIVE STREAMS", "PING RTT", "UNHEALTHY"),
            [(_of_worker(t), _prefix(m.get("client_identity")), m.get("instance"), m.get("peer"),
              _serves(m), m.get("connected_since"), m.get("active_streams"),
              rtt(m.get("ping_rtt_seconds")), _unhealthy(m))
             for t, m in members],
            empty="(no Tunnel connections)"),
    ] + _quic(doc.get("quic"))


def _of_worker(row):
    """A Tunnel's name, and its worker under a supervisor (`workers = N`)."""
    worker = row.get("worker")
    return row.get("name") if worker is None else f"{row.get('name')} (worker {worker})"


def _quic(quic):
    """The public QUIC sockets and their flows; nothing with `public-quic` off."""
    if not isinstance(quic, dict):
        return []
    return ["QUIC\n" + table(("UDP ADDRESS", "FLOWS", "PENDING FLOWS"),
                             [(", ".join(quic.get("addresses") or []), quic.get("flows"),
                               quic.get("pending_flows"))], empty="")]


def _serves(member):
    """The hostnames a pool member's hello lists, so replicas with different Services show
    side by side; None for a document without them (an older Server)."""
    names = list(member.get("hostnames") or [])
    if member.get("catch_all"):
        names.append("(Catch-all)")
    return ", ".join(names) if "hostnames" in member or "catch_all" in member else None


def _unhealthy(member):
    """What keeps Visitors off a pool member: the hostnames its Client reported unhealthy,
    an overdue keepalive ping; None for a document without the fields (an older Server)."""
    names = list(member.get("unhealthy_hostnames") or [])
    if member.get("catch_all_unhealthy"):
        names.append("(Catch-all)")
    if member.get("ping_overdue"):
        names.append("(ping overdue)")
    return ", ".join(names) if names else None


def _health(service):
    """`healthy`/`unhealthy`, and the active check's kind when there is one."""
    state = service.get("health")
    check = service.get("health_check")
    return f"{state} ({check} check)" if state and check else state


def _client(doc):
    return [
        "Server connections\n" + table(
            ("SERVER ADDRESS", "RESOLVED ADDRESS", "CONN", "SERVER WORKER", "IDENTITY", "STATE",
             "SINCE", "ACTIVE STREAMS", "LAST ERROR", "NEXT RETRY"),
            [(s.get("address"), s.get("resolved_address"), s.get("connection"), _server_worker(s),
              _prefix(s.get("client_identity")), s.get("state"), s.get("connected_since"),
              s.get("active_streams"), s.get("last_error"), _seconds(s.get("next_retry_seconds")))
             for s in doc.get("servers") or []],
            empty="(no Server addresses)"),
        "Services\n" + table(
            ("PUBLIC HOSTNAMES", "LOCAL BACKEND", "TLS MODE", "ACTIVE STREAMS", "HEALTH"),
            [(", ".join(s.get("public_hostnames") or []) or "(Catch-all)", s.get("backend"),
              s.get("tls_mode"), s.get("active_streams"), _health(s))
             for s in doc.get("services") or []],
            empty="(no Services)"),
    ]


def _server_worker(row):
    """`worker/workers` of the Server worker process holding the connection (its welcome,
    docs/protocol.md "Server workers"); None while not established."""
    worker, workers = row.get("server_worker"), row.get("server_workers")
    return None if worker is None or workers is None else f"{worker}/{workers}"


def _certificates(certificates, now):
    rows = []
    for cert in certificates:
        after = cert.get("not_after_seconds")
        days = int((after - now) // DAY) if isinstance(after, int | float) else None
        left = None if days is None else "EXPIRED" if days < 0 else days
        rows.append((cert.get("kind"), cert.get("hostname"), cert.get("not_after"), left))
    return "Certificates\n" + table(("KIND", "HOSTNAME", "NOT AFTER", "DAYS LEFT"), rows,
                                    empty="(none in use)")


def table(headings, rows, empty):
    """Left-aligned columns two spaces apart; `empty` stands in for no rows."""
    if not rows:
        return "  " + empty
    cells = [list(headings)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def duration(seconds):
    """12s, 5m 3s, 2h 4m, 3d 1h: the two largest units."""
    seconds = int(seconds)
    units = (("d", DAY), ("h", 3600), ("m", 60), ("s", 1))
    parts = []
    for name, size in units:
        value, seconds = divmod(seconds, size)
        if value or parts:
            parts.append(f"{value}{name}")
    return " ".join(parts[:2]) or "0s"


def rtt(seconds):
    return f"{seconds * 1000:.1f} ms" if isinstance(seconds, int | float) else None


def _seconds(seconds):
    return f"{seconds:.1f}s" if isinstance(seconds, int | float) else None


def _prefix(identity):
    return identity[:12] if isinstance(identity, str) else identity


def _cell(value):
    if value is None:
        return "-"
    text = str(value)
    return text if text.isprintable() else "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
        for c in text)

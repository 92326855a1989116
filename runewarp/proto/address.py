"""How a (host, port) address is written everywhere: `host:port`, IPv6 in brackets."""


def format_address(address) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

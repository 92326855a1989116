"""A real TLS Local backend for the end-to-end tests (threads + stdlib ssl, no Runewarp code).

    python tests/backend.py NAME CERT KEY [plain]

Prints its port on stdout.  HTTP/1.1 endpoints:
  GET /            -> "backend=NAME\n"
  GET /bytes/N     -> N deterministic bytes
  POST /echo       -> the request body, unchanged
  GET /stall       -> never reads or answers (a backend that stops reading)
"""

import http.server
import ssl
import sys
import threading


def pattern(n):
    block = bytes(range(256)) * 256
    whole, rest = divmod(n, len(block))
    return block * whole + block[:rest]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/":
            self._reply(f"backend={self.server.name}\n".encode())
        elif self.path.startswith("/bytes/"):
            self._reply(pattern(int(self.path.split("/")[2])))
        elif self.path == "/stall":
            threading.Event().wait(600)
        else:
            self._reply(b"not found\n", 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path == "/echo":
            self._reply(body)
        else:
            self._reply(b"not found\n", 404)


class Server(http.server.ThreadingHTTPServer):
    """A room for 128 pending connections (the stdlib's backlog is 5), and the TLS handshake
    in each connection's thread, not in the accept loop: 100 Visitors at once on a busy
    machine must not queue behind one handshake and miss the Client's backend-connect
    deadline."""

    request_queue_size = 128

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # as the accept loop dropped it before: quietly
        super().finish_request(request, client_address)


def main():
    name, cert, key = sys.argv[1:4]
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.name = name
    if "plain" not in sys.argv[4:]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

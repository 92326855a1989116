"""Fallback TLS backend for bench.py when nginx is unavailable (stdlib only, threads).

    python bench/pybackend.py PORT CERT KEY BULK_FILE BULK8_FILE

Same endpoints as the nginx config: `/` -> "ok\\n", `/bulk` and `/bulk8` -> the files.
Much slower than nginx, so DIRECT numbers taken with it say little about Runewarp's
overhead; bench.py labels them accordingly.
"""

import http.server
import os
import shutil
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        files = self.server.files
        if self.path == "/":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path in files:
            path = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(os.path.getsize(path)))
            self.end_headers()
            with open(path, "rb") as src:
                shutil.copyfileobj(src, self.wfile, 256 * 1024)
        else:
            self.send_error(404)


def main():
    port, cert, key, bulk, bulk8 = sys.argv[1:6]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    server.files = {"/bulk": bulk, "/bulk8": bulk8}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A banner server for conntest's --expect benchmark (BENCHMARKS.md).

Each connection gets `SSH-2.0-test\\r\\n` after a real delay (default 50 ms), as a
server that does some work before it greets, then is held until the client closes.

    python3 bench/banner_server.py [PORT [DELAY_MS]]     # default 18022 50
"""
import socket
import sys
import threading
import time


def serve(conn, delay):
    with conn:
        time.sleep(delay)
        try:
            conn.sendall(b"SSH-2.0-test\r\n")
            while conn.recv(4096):
                pass
        except OSError:
            pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18022
    delay = (float(sys.argv[2]) if len(sys.argv) > 2 else 50.0) / 1000.0
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print(f"banner server on 127.0.0.1:{port}, banner after {delay * 1000:.0f} ms", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, delay), daemon=True).start()


if __name__ == "__main__":
    main()

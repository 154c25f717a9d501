#!/usr/bin/env python3
"""Times `twistctl conntest` against `nc -z` and `nmap -sT` on loopback, side by side.

Usage (from the repository root, after `cargo build --release`; needs hyperfine,
netcat-openbsd and nmap from Debian):

    python3 bench/conntest_peers.py [--runs N]

It opens its own listeners on 127.0.0.1 (three open ports, and fifty ports that
silently drop SYNs: listen(0) sockets whose one queue slot is filled and never
accepted), runs each case with hyperfine, and prints a Markdown table of medians and
ranges. Everything stays on this machine.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

TWISTCTL = os.path.join("target", "release", "twistctl")


def open_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s


def silent_listener():
    """A port whose accept queue is full: new SYNs are dropped, connects hang."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    return s, fillers


def hyperfine(commands, runs, warmup):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            ["hyperfine", "-N", "-i", "-w", str(warmup), "-r", str(runs),
             "--export-json", out.name, *commands],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out.name) as f:
            return json.load(f)["results"]


def row(case, results):
    cells = []
    for r in results:
        cells.append("%.1f ms (%.1f–%.1f)" % (r["median"] * 1e3, r["min"] * 1e3, r["max"] * 1e3))
    return "| %s | %s |" % (case, " | ".join(cells))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not os.path.exists(TWISTCTL):
        sys.exit("build first: cargo build --release")
    keep = [open_listener() for _ in range(3)]
    open_ports = sorted(s.getsockname()[1] for s in keep)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    silent = [silent_listener() for _ in range(50)]
    silent_ports = ",".join(str(s.getsockname()[1]) for s, _ in silent)

    scan = subprocess.run([TWISTCTL, "conntest", "--open", "127.0.0.1", "1-65535"],
                          capture_output=True, text=True).stdout
    found = sorted(int(line.rsplit(" ", 1)[1]) for line in scan.splitlines())
    missing = sorted(set(open_ports) - set(found))
    print("open ports found by twistctl in 1-65535:", found)
    print("our listeners:", open_ports, "all found" if not missing else "MISSING %s" % missing)

    print("| case | twistctl | nc -z | nmap -sT |")
    print("|---|---|---|---|")
    print(row("scan 1-20000", hyperfine([
        f"{TWISTCTL} conntest --open 127.0.0.1 1-20000",
        "nc -z -w1 127.0.0.1 1-20000",
        "nmap -sT -T5 -p1-20000 127.0.0.1"], args.runs, 3)))
    print(row("50 silent ports, 1 s timeout", hyperfine([
        f"{TWISTCTL} conntest --timeout 1s 127.0.0.1 {silent_ports}"], 3, 0))
        + " (nc -z -w1 waits 1 s per port: about 50 s) | see below |")
    print(row("50 silent ports, nmap -T5", hyperfine([
        f"nmap -sT -T5 -p{silent_ports} 127.0.0.1"], 3, 0)))
    print(row("one open port", hyperfine([
        f"{TWISTCTL} conntest 127.0.0.1 {open_ports[0]}",
        f"nc -z 127.0.0.1 {open_ports[0]}"], args.runs * 5, 5)))
    print(row("one closed port", hyperfine([
        f"{TWISTCTL} conntest 127.0.0.1 {closed_port}",
        f"nc -z 127.0.0.1 {closed_port}"], args.runs * 5, 5)))


if __name__ == "__main__":
    main()

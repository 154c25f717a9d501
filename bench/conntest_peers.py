#!/usr/bin/env python3
"""Times `twistctl conntest` against `nc -z` and `nmap -sT` on loopback, side by side.

Usage (from the repository root, after `cargo build --release`; needs hyperfine,
netcat-openbsd and nmap from Debian):

    python3 bench/conntest_peers.py [--runs N]

It opens its own listeners on 127.0.0.1 (three open ports inside the scanned range
1-20000, and fifty ports that silently drop SYNs: listen(0) sockets whose one queue
slot is filled and never accepted), checks that twistctl's scan reports exactly the
ports the kernel lists as listening there, counts syscalls per port (with strace, if
installed), runs each case with hyperfine, and prints a Markdown table of medians and
ranges. Everything stays on this machine.
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile

TWISTCTL = os.path.join("target", "release", "twistctl")


def open_listener(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    return s


def listener_in_scan_range(low, high):
    """A listener on a free port between low and high, inside the timed scan."""
    for port in random.sample(range(low, high), 200):
        try:
            return open_listener(port)
        except OSError:
            continue
    sys.exit("no free port between %d and %d" % (low, high))


def listening_ports(low, high):
    """Every port in [low, high] with a TCP listener that 127.0.0.1 reaches: from
    /proc/net/tcp (127.0.0.1 or 0.0.0.0) and /proc/net/tcp6 (:: takes IPv4 too,
    unless the socket is v6-only, which /proc does not show; nobody here uses that)."""
    ports = set()
    wanted = {"tcp": ("0100007F", "00000000"), "tcp6": ("00000000000000000000000000000000",)}
    for table, addresses in wanted.items():
        try:
            with open("/proc/net/" + table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    address, port = fields[1].split(":")
                    if fields[3] == "0A" and address in addresses:
                        port = int(port, 16)
                        if low <= port <= high:
                            ports.add(port)
        except FileNotFoundError:
            pass
    return sorted(ports)


def syscalls_per_port(command, ports):
    """Syscalls the whole process makes, per port scanned (strace -f -c)."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        subprocess.run(["strace", "-f", "-c", "-o", out.name, *command],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out.name) as f:
            for line in f:
                fields = line.split()
                if fields and fields[-1] == "total":
                    return int(fields[3]) / ports
    return float("nan")


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
    keep = [listener_in_scan_range(10000, 20000) for _ in range(3)]
    ours = sorted(s.getsockname()[1] for s in keep)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    silent = [silent_listener() for _ in range(50)]
    silent_ports = ",".join(str(s.getsockname()[1]) for s, _ in silent)

    scan = subprocess.run([TWISTCTL, "conntest", "--open", "127.0.0.1", "1-20000"],
                          capture_output=True, text=True).stdout
    found = sorted(int(line.rsplit(" ", 1)[1]) for line in scan.splitlines())
    expected = listening_ports(1, 20000)
    print("our listeners:", ours)
    print("listening in 1-20000 (/proc/net):", expected)
    print("reported by twistctl:", found, "exact" if found == expected else "MISMATCH")
    if found != expected:
        sys.exit(1)
    if shutil.which("strace"):
        print("syscalls per port, 1-20000: twistctl %.2f, nc -z %.2f" % (
            syscalls_per_port([TWISTCTL, "conntest", "--open", "127.0.0.1", "1-20000"], 20000),
            syscalls_per_port(["nc", "-z", "-w1", "127.0.0.1", "1-20000"], 20000)))
    open_ports = ours

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

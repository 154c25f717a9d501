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
ranges. Everything stays on this machine. The Happy Eyeballs case (a name whose IPv6
address never answers and whose IPv4 address is open) needs root: it gives the name
`dual.test` both addresses in a private mount namespace (`unshare -m`) whose
/etc/hosts is its own.
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
    return s, fill_queue(s)


def fill_queue(listener):
    """listen(0) on `listener`, then fill its one queue slot with connections that are
    never accepted: further SYNs to it are dropped. Returns the filling sockets."""
    listener.listen(0)
    address = listener.getsockname()[:2]
    fillers = []
    for _ in range(3):
        c = socket.socket(listener.family)
        c.setblocking(False)
        try:
            c.connect(address)
        except BlockingIOError:
            pass
        fillers.append(c)
    return fillers


def dual_stack_port():
    """A port P where [::1]:P drops SYNs and 127.0.0.1:P accepts: the IPv6 address of
    a name never answers, its IPv4 address is open. None without IPv6 loopback."""
    for _ in range(50):
        try:
            v6 = socket.socket(socket.AF_INET6)
            v6.bind(("::1", 0))
        except OSError:
            return None
        port = v6.getsockname()[1]
        fillers = fill_queue(v6)
        try:
            v4 = open_listener(port)
        except OSError:
            v6.close()
            continue
        return port, (v6, fillers, v4)
    return None


def hyperfine_with_hosts(hosts_text, commands, runs, warmup):
    """hyperfine in a private mount namespace whose /etc/hosts is `hosts_text`
    (needs root and unshare); None where that is not possible."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".hosts") as hosts, \
            tempfile.NamedTemporaryFile(suffix=".json") as out:
        hosts.write(hosts_text)
        hosts.flush()
        inner = ("mount --bind %s /etc/hosts && exec hyperfine -N -i -w %d -r %d "
                 "--export-json %s %s") % (
            hosts.name, warmup, runs, out.name,
            " ".join("'%s'" % c for c in commands))
        done = subprocess.run(["unshare", "-m", "sh", "-c", inner],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done.returncode != 0:
            return None
        with open(out.name) as f:
            return json.load(f)["results"]


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
    dual = dual_stack_port()
    if dual is None:
        print("| Happy Eyeballs | skipped: no IPv6 loopback | | |")
    else:
        port, keep_dual = dual
        results = hyperfine_with_hosts("::1 dual.test\n127.0.0.1 dual.test\n", [
            f"{TWISTCTL} conntest dual.test {port}",
            # Without -w, nc waits out the kernel's SYN retries on ::1 (over two minutes).
            f"nc -z -w5 dual.test {port}"], 3, 0)
        if results is None:
            print("| Happy Eyeballs | skipped: needs root and unshare for a private /etc/hosts | | |")
        else:
            print(row("Happy Eyeballs (::1 silent, 127.0.0.1 open)", results))
    print(row("one open port", hyperfine([
        f"{TWISTCTL} conntest 127.0.0.1 {open_ports[0]}",
        f"nc -z 127.0.0.1 {open_ports[0]}"], args.runs * 5, 5)))
    print(row("one closed port", hyperfine([
        f"{TWISTCTL} conntest 127.0.0.1 {closed_port}",
        f"nc -z 127.0.0.1 {closed_port}"], args.runs * 5, 5)))


if __name__ == "__main__":
    main()

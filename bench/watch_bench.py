#!/usr/bin/env python3
"""Measures `twistctl conntest --watch` on loopback: how exactly it keeps its grid, what
a probe costs, and how its handshake times compare with a minimal C loop timing
`connect()` on the same port.

Usage (from the repository root, after `cargo build --release`; needs gcc):

    python3 bench/watch_bench.py

1. Grid accuracy: `--watch --interval 10ms --count 1000 --json` against a listener; the
   last probe should start 9.99 s after the first (within 2 ms), with no tick skipped.
2. Cost: `--watch --interval 1ms --count 10000`, the whole process's user + system CPU
   time (from wait4) divided by the probes.
3. Handshake times: the median `time_ms` of the 1,000 probes of (1) next to the median of
   1,000 blocking `connect()` calls timed with clock_gettime(CLOCK_MONOTONIC) in C.

Everything stays on 127.0.0.1. Prints a Markdown table.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TWISTCTL = os.environ.get("TWISTCTL", os.path.join("target", "release", "twistctl"))

C_LOOP = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int port = atoi(argv[1]), n = atoi(argv[2]);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("%.6f\n", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
        close(s);
        usleep(10000); /* the same 10 ms spacing as the watch */
    }
    return 0;
}
"""


def listener():
    """A listener that accepts and closes at once, on a thread of its own (so the
    queue never fills), on a free port."""
    import threading

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)

    def serve():
        while True:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return s, s.getsockname()[1]


def run_timed(cmd):
    """Runs cmd; returns (stdout, user+system CPU seconds of the child)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("%s failed" % " ".join(cmd))
    return out.decode(), ru.ru_utime + ru.ru_stime


def main():
    if not os.path.exists(TWISTCTL):
        sys.exit("build first: cargo build --release")
    sock, port = listener()
    target = "127.0.0.1:%d" % port

    out, _ = run_timed([TWISTCTL, "conntest", "--watch", "--json", "--interval", "10ms",
                        "--count", "1000", target])
    objects = [json.loads(line) for line in out.splitlines()]
    probes = [o for o in objects if not o.get("summary")]
    summary = [o for o in objects if o.get("summary")][0]
    stamps = [time.mktime(time.strptime(o["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
              + float("0." + o["timestamp"][20:23]) for o in probes]
    span_ms = (stamps[-1] - stamps[0]) * 1000
    watch_times = [o["time_ms"] for o in probes if o["status"] == "open"]

    _, cpu = run_timed([TWISTCTL, "conntest", "--watch", "--interval", "1ms", "--count",
                        "10000", target])

    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "c.c"), os.path.join(d, "c")
        with open(src, "w") as f:
            f.write(C_LOOP)
        subprocess.check_call(["gcc", "-O2", "-o", exe, src])
        c_out = subprocess.check_output([exe, str(port), "1000"]).decode()
    c_times = [float(x) for x in c_out.split()]
    sock.close()

    print("| figure | value |")
    print("|---|---|")
    print("| grid: last probe start − first, `--interval 10ms --count 1000` | %.0f ms (ideal 9,990 ms; off by %.1f ms) |"
          % (span_ms, span_ms - 9990))
    print("| grid: probes, skipped ticks | %d, %d |" % (len(probes), summary["skipped"]))
    print("| cost: CPU per probe, `--interval 1ms --count 10000` | %.1f µs |" % (cpu / 10000 * 1e6))
    print("| handshake median, twistctl --watch (1,000 probes) | %.3f ms |" % statistics.median(watch_times))
    print("| handshake median, C loop of blocking connect() (1,000) | %.3f ms |" % statistics.median(c_times))


if __name__ == "__main__":
    main()

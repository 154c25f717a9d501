#!/usr/bin/env python3
"""Measures `twistctl conntest --watch` on loopback: how exactly it keeps its grid, what
a probe costs, and how its handshake times compare with a minimal C loop timing
`connect()` on the same port.

Usage (from the repository root, after `cargo build --release`; needs gcc):

    python3 bench/watch_bench.py [--cost-only] [--trace]

1. Grid accuracy: `--watch --interval 10ms --count 1000 --json` against a listener; the
   last probe should start 9.99 s after the first (within 2 ms), with no tick skipped.
2. Cost: `--watch --interval 1ms --count 10000`, the whole process's user + system CPU
   time (from wait4) divided by the probes, and beside it the floor measured the same
   way: a C loop doing only what a probe must (a non-blocking socket, connect(), poll()
   until writable, SO_ERROR, close(), one line written to the same kind of pipe), once
   on the same 1 ms grid (sleeping to the next grid point, as the watch does) and once
   back to back (the handshake's own cost, without the sleep and wake-up per probe).
3. Handshake times: the median `time_ms` of the 1,000 probes of (1) next to the median of
   1,000 blocking `connect()` calls timed with clock_gettime(CLOCK_MONOTONIC) in C.

`--cost-only` runs (2) alone. `--trace` adds the load-independent counts: instructions
per probe under `valgrind --tool=callgrind` (a watch of 2,001 probes minus one of 1,
`--interval 1ms --timeout 1s`, so that the slow-down does not turn probes into
timeouts) and system calls per probe from `strace -c -f` (2,000 probes).

Everything stays on 127.0.0.1. The listener runs in this (Python) process, so its
accept() and close() are not counted in twistctl's CPU time. Prints a Markdown table,
and the load average before and after (CPU time per probe depends on it: a busy machine
evicts the caches between two probes).
"""
import argparse
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


C_FLOOR = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* argv: port, probes, interval in microseconds (0: back to back, no output). */
int main(int argc, char **argv) {
    int port = atoi(argv[1]), n = atoi(argv[2]);
    long interval_ns = atol(argv[3]) * 1000L;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    char line[64];
    for (int i = 0; i < n; i++) {
        if (interval_ns) {
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
            next.tv_nsec += interval_ns;
            while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        }
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) { perror("connect"); return 1; }
        struct pollfd p = { s, POLLOUT, 0 };
        poll(&p, 1, 1000);
        int err = 0; socklen_t l = sizeof err;
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { fprintf(stderr, "connect: %d\n", err); return 1; }
        close(s);
        if (interval_ns) {
            int len = snprintf(line, sizeof line, "open, seq=%d\n", i + 1);
            if (write(1, line, len) != len) return 1;
        }
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
    """Runs cmd; returns (stdout, user CPU seconds, system CPU seconds of the child)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("%s failed" % " ".join(cmd))
    return out.decode(), ru.ru_utime, ru.ru_stime


def compile_c(d, name, source):
    src, exe = os.path.join(d, name + ".c"), os.path.join(d, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.check_call(["gcc", "-O2", "-o", exe, src])
    return exe


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def per_probe(user, system, probes):
    return "%.1f µs (user %.1f, system %.1f)" % (
        (user + system) / probes * 1e6, user / probes * 1e6, system / probes * 1e6)


def watch_cmd(target, interval, count, *extra):
    return [TWISTCTL, "conntest", "--watch", "--interval", interval, "--count", str(count),
            *extra, target]


def instructions(target):
    """Instructions per probe under callgrind: 2,001 probes minus 1."""
    counts = []
    for n in (1, 2001):
        with tempfile.TemporaryDirectory() as d:
            run = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.path.join(d, "out")]
                + watch_cmd(target, "1ms", n, "--timeout", "1s"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        collected = [line for line in run.stderr.splitlines() if "Collected" in line][0]
        counts.append(int(collected.split(":")[1].strip().replace(",", "")))
    return (counts[1] - counts[0]) / 2000


def syscalls(target):
    """System calls per probe from strace -c -f over 2,000 probes, by name."""
    with tempfile.TemporaryDirectory() as d:
        summary = os.path.join(d, "strace")
        subprocess.run(["strace", "-c", "-f", "-o", summary] + watch_cmd(target, "1ms", 2000),
                       stdout=subprocess.DEVNULL, check=True)
        calls = {}
        with open(summary) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                    calls[fields[-1]] = int(fields[3])
    per = {name: n / 2000 for name, n in calls.items() if n >= 1000}
    return sum(per.values()), per


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cost-only", action="store_true", help="measure the cost alone")
    parser.add_argument("--trace", action="store_true",
                        help="add instructions (callgrind) and syscalls (strace) per probe")
    args = parser.parse_args()
    if not os.path.exists(TWISTCTL):
        sys.exit("build first: cargo build --release")
    sock, port = listener()
    target = "127.0.0.1:%d" % port
    rows = []
    load_before = loadavg()

    if not args.cost_only:
        out, _, _ = run_timed(watch_cmd(target, "10ms", 1000, "--json"))
        objects = [json.loads(line) for line in out.splitlines()]
        probes = [o for o in objects if not o.get("summary")]
        summary = [o for o in objects if o.get("summary")][0]
        stamps = [time.mktime(time.strptime(o["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
                  + float("0." + o["timestamp"][20:23]) for o in probes]
        span_ms = (stamps[-1] - stamps[0]) * 1000
        watch_times = [o["time_ms"] for o in probes if o["status"] == "open"]
        rows.append(("grid: last probe start − first, `--interval 10ms --count 1000`",
                     "%.0f ms (ideal 9,990 ms; off by %.1f ms)" % (span_ms, span_ms - 9990)))
        rows.append(("grid: probes, skipped ticks", "%d, %d" % (len(probes), summary["skipped"])))

    _, user, system = run_timed(watch_cmd(target, "1ms", 10000))
    rows.append(("cost: CPU per probe, `--interval 1ms --count 10000`",
                 per_probe(user, system, 10000)))
    with tempfile.TemporaryDirectory() as d:
        floor = compile_c(d, "floor", C_FLOOR)
        _, user, system = run_timed([floor, str(port), "10000", "1000"])
        rows.append(("floor: C loop, a probe and a line every 1 ms, 10,000 probes",
                     per_probe(user, system, 10000)))
        _, user, system = run_timed([floor, str(port), "10000", "0"])
        rows.append(("floor: the same C loop back to back (no sleep, no line)",
                     per_probe(user, system, 10000)))
        if not args.cost_only:
            exe = compile_c(d, "c", C_LOOP)
            c_out = subprocess.check_output([exe, str(port), "1000"]).decode()
            c_times = [float(x) for x in c_out.split()]
            rows.append(("handshake median, twistctl --watch (1,000 probes)",
                         "%.3f ms" % statistics.median(watch_times)))
            rows.append(("handshake median, C loop of blocking connect() (1,000)",
                         "%.3f ms" % statistics.median(c_times)))
    if args.trace:
        rows.append(("instructions per probe (callgrind)", "{:,.0f}".format(instructions(target))))
        total, per = syscalls(target)
        rows.append(("system calls per probe (strace -c -f)", "%.2f: %s" % (total, ", ".join(
            "%s %.2f" % (name, n) for name, n in sorted(per.items(), key=lambda kv: -kv[1])))))
    sock.close()

    print("| figure | value |")
    print("|---|---|")
    for name, value in rows:
        print("| %s | %s |" % (name, value))
    print()
    print("load average (1, 5, 15 min): %s before, %s after" % (load_before, loadavg()))


if __name__ == "__main__":
    main()

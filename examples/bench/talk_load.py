#!/usr/bin/env python3
"""Load for `twistctl talk-server --echo` (BENCHMARKS.md, "talk over TLS").

    talk_load.py echo  HOST PORT [--tls] [--clients N] [--lines N]
    talk_load.py idle  HOST PORT [--tls] [--clients N] --pid SERVER_PID

`echo`: N clients connect at once (TLS handshakes done first when --tls), then each
sends its lines and reads every echo back; prints the wall time, lines/s both ways
(each line is sent once and received once) and the server's CPU seconds for the
exchange (from /proc/PID/stat when --pid is given).

`idle`: N clients connect (and finish the handshake) and stay idle; prints the
server's resident memory before and after (from /proc/PID/status).

TLS clients verify nothing: the benchmark measures the server's cost, not trust.
"""
import argparse
import asyncio
import os
import ssl
import time


def cpu_seconds(pid):
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def context(tls):
    if not tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(args):
    return await asyncio.open_connection(args.host, args.port, ssl=context(args.tls),
                                         limit=1 << 20)


async def echo(args):
    conns = await asyncio.gather(*(connect(args) for _ in range(args.clients)))
    line = b"x" * 60 + b"\n"
    cpu0, t0 = cpu_seconds(args.pid), time.perf_counter()

    async def one(reader, writer):
        writer.write(line * args.lines)
        await writer.drain()
        for _ in range(args.lines):
            await reader.readline()

    await asyncio.gather(*(one(r, w) for r, w in conns))
    wall, cpu1 = time.perf_counter() - t0, cpu_seconds(args.pid)
    total = args.clients * args.lines
    out = f"{'tls' if args.tls else 'tcp'}: {total} lines in {wall:.3f}s: {total / wall:,.0f} lines/s each way"
    if cpu0 is not None:
        cpu = cpu1 - cpu0
        out += f"; server CPU {cpu:.2f}s = {cpu / total * 1e6:.1f} us/line"
    print(out)
    for _, w in conns:
        w.close()


async def idle(args):
    before = rss_kib(args.pid)
    conns = []
    for _ in range(args.clients):
        conns.append(await connect(args))
    await asyncio.sleep(1)
    after = rss_kib(args.pid)
    print(f"{'tls' if args.tls else 'tcp'}: {args.clients} idle clients: server RSS "
          f"{before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
          f"({(after - before) / args.clients:.1f} KiB per client)")
    for _, w in conns:
        w.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "idle"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--pid", type=int)
    args = p.parse_args()
    asyncio.run(echo(args) if args.mode == "echo" else idle(args))


if __name__ == "__main__":
    main()

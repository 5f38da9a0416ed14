"""Supervisor benchmark: Corral against supervisord, N copies of `python3 -m http.server`.

Run it through `bash bench/supervise.sh`, which installs supervisord into a throwaway venv and
cleans up on any exit. Measured for each tool and N (same machine, same run, one tool at a time):

1. launch -> every instance port accepts a TCP connection (clock starts before the launch command);
2. RSS of the supervising daemon process once everything is up;
3. kill -9 of one instance -> its port accepts again (median of several, different instances);
4. stop command -> every instance pid is gone (`corral down` / `supervisorctl shutdown`);
5. idle CPU of the daemon (% of one core, psutil cpu_times deltas): Corral with an HTTP health
   check on each of 100 instances, and both tools without health checks.

Each tool is launched and stopped --reps times per N (who goes first alternates); restarts and
idle CPU are measured in the first cycle. A plain shell loop starting the same servers is timed
in between as the floor, and the system CPU is sampled before each cycle to flag a busy machine.

Only processes started here are signalled, by pid; `cleanup` finds them by the unique work dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

# A refused connect costs ~20 us of CPU: sweeping 100 ports every 20 ms keeps the poller under
# ~10 % of one core while the instances start (it competes with them for the same CPUs).
SWEEP = 0.02  # seconds between connect sweeps over many ports
POLL = 0.001  # seconds between checks of one port or a few pids
LAUNCH_DEADLINE = 120.0
RESTART_DEADLINE = 30.0
STOP_DEADLINE = 60.0
BUSY: list[float] = []  # system-wide CPU % just before each cycle (nothing of ours runs then)


# --- ports and processes ----------------------------------------------------------------------


def accepts(port: int) -> bool:
    """Does 127.0.0.1:port accept a TCP connection right now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_range(n: int, start: int, taken: set[int]) -> int:
    """The lowest base >= start such that base..base+n-1 are all free and not yet handed out."""
    base = start
    while base + n < 65000:
        bad = [p for p in range(base, base + n) if p in taken or not bindable(p) or accepts(p)]
        if not bad:
            taken.update(range(base, base + n))
            return base
        base = max(bad) + 1
    raise RuntimeError(f"no {n} consecutive free ports above {start}")


def wait_ports(
    ports: Sequence[int], deadline: float, launcher: subprocess.Popen[bytes] | None = None
) -> tuple[float, float]:
    """Poll until every port accepts and the launcher (if any) has exited.

    Returns the time.monotonic() when the last port accepted, and when the launcher exited.
    """
    pending = set(ports)
    t_ports = t_launcher = 0.0
    while True:
        for port in sorted(pending):
            if accepts(port):
                pending.discard(port)
        now = time.monotonic()
        if not pending and not t_ports:
            t_ports = now
        if not t_launcher and (launcher is None or launcher.poll() is not None):
            if launcher is not None and launcher.returncode != 0:
                raise RuntimeError(f"{launcher.args!r} exited {launcher.returncode}")
            t_launcher = now
        if t_ports and t_launcher:
            return t_ports, t_launcher
        if now > deadline:
            raise TimeoutError(f"{len(pending)} port(s) never accepted, e.g. {min(pending)}")
        time.sleep(SWEEP if len(pending) > 1 else POLL)


def gone(proc: psutil.Process) -> bool:
    """Dead: no such process, a recycled pid, or a zombie (its sockets are already closed)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def instances_of(daemon: psutil.Process) -> dict[int, psutil.Process]:
    """port -> process, for the daemon's http.server children (port read from the cmdline)."""
    found: dict[int, psutil.Process] = {}
    for child in daemon.children():
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if "http.server" in argv and not gone(child):
                found[int(argv[argv.index("http.server") + 1])] = child
    return found


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def idle_cpu(proc: psutil.Process, seconds: float) -> float:
    """CPU of one process over `seconds` of wall time, as % of one core."""
    c0, t0 = cpu_seconds(proc), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(proc), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def processes_under(work: Path) -> Iterator[psutil.Process]:
    """Processes of this benchmark: the work dir in their command line or as their cwd."""
    mine = {os.getpid(), os.getppid()}
    marker = str(work)
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(proc.cmdline()) or proc.cwd().startswith(marker):
                yield proc


def cleanup(work: Path) -> int:
    """Stop everything this benchmark started: daemons first (SIGTERM), then SIGKILL leftovers."""
    procs = list(processes_under(work))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    late = list(processes_under(work))  # instances a daemon restarted while it was stopping
    for proc in late:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(late, timeout=5)
    return len(procs) + len(late)


def find_daemon(ports: Sequence[int], deadline: float) -> psutil.Process:
    """The parent of whatever listens on the first port (the supervising daemon)."""
    while time.monotonic() < deadline:
        for conn in psutil.net_connections("tcp4"):
            port = getattr(conn.laddr, "port", None)
            if conn.status == psutil.CONN_LISTEN and port == ports[0] and conn.pid:
                parent = psutil.Process(conn.pid).parent()
                if parent is not None:
                    return parent
        time.sleep(0.05)
    raise TimeoutError("could not find the daemon")


# --- the two tools ------------------------------------------------------------------------------


class Tool:
    name = ""

    def __init__(self, work: Path, n: int, base: int, rep: int, *, health: bool = False) -> None:
        self.dir = work / f"{self.name}-{n}{'-health' if health else ''}-{rep}"
        self.dir.mkdir(parents=True)
        self.n, self.base, self.health = n, base, health
        self.ports = list(range(base, base + n))
        self.write_config()

    def write_config(self) -> None:
        raise NotImplementedError

    def launch_argv(self) -> list[str]:
        raise NotImplementedError

    def stop_argv(self) -> list[str]:
        raise NotImplementedError

    def run(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.out", "wb") as out:
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir
            )


class Corral(Tool):
    name = "corral"
    bin = "corral"

    def write_config(self) -> None:
        health = '\nhealth = { http = "/", interval = "2s" }' if self.health else ""
        (self.dir / "corral.toml").write_text(
            f'project = "bench{self.n}"\n\n'
            "[services.web]\n"
            'command = "python3 -m http.server {port} --bind 127.0.0.1"\n'
            f"instances = {self.n}\n"
            f"port = {self.base}\n"
            f"venv = false{health}\n"
        )

    def launch_argv(self) -> list[str]:
        return [self.bin, "up", "-d", "-f", str(self.dir / "corral.toml")]

    def stop_argv(self) -> list[str]:
        return [self.bin, "down", "-f", str(self.dir / "corral.toml")]


class Supervisord(Tool):
    name = "supervisord"
    bin_dir = Path()

    def write_config(self) -> None:
        d = self.dir
        (d / "logs").mkdir()
        (d / "supervisord.conf").write_text(
            f"[unix_http_server]\nfile={d}/supervisor.sock\n\n"
            f"[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n"
            f"childlogdir={d}/logs\ndirectory={d}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n"
            "[program:web]\n"
            # process_num runs from numprocs_start, so it is the port itself.
            "command=python3 -m http.server %(process_num)d --bind 127.0.0.1\n"
            "process_name=%(program_name)s_%(process_num)02d\n"
            f"numprocs={self.n}\nnumprocs_start={self.base}\n"
            f"directory={d}\nautorestart=true\n"
        )

    def launch_argv(self) -> list[str]:
        return [str(self.bin_dir / "supervisord"), "-c", str(self.dir / "supervisord.conf")]

    def stop_argv(self) -> list[str]:
        conf = str(self.dir / "supervisord.conf")
        return [str(self.bin_dir / "supervisorctl"), "-c", conf, "shutdown"]


# --- one run --------------------------------------------------------------------------------------


@dataclass
class Result:
    """Every sample for one tool at one N; the report shows medians."""

    tool: str
    n: int
    health: bool = False
    ports_up_s: list[float] = field(default_factory=list)
    launch_returned_s: list[float] = field(default_factory=list)  # up -d waits for ready
    daemon_rss_mb: list[float] = field(default_factory=list)
    idle_cpu_pct: list[float] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)  # until every instance pid is gone
    stop_returned_s: list[float] = field(default_factory=list)
    daemon_gone_s: list[float] = field(default_factory=list)

    def median(self, attr: str) -> float:
        samples: list[float] = getattr(self, attr)
        return statistics.median(samples) if samples else float("nan")

    def spread(self, attr: str, scale: float = 1.0, digits: int = 2) -> str:
        samples: list[float] = getattr(self, attr)
        return " ".join(f"{x * scale:.{digits}f}" for x in samples) or "-"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def launch(tool: Tool, res: Result) -> psutil.Process:
    """Launch -> every port accepts (clock started before the launch command); the daemon."""
    t0 = time.monotonic()
    launcher = tool.run(tool.launch_argv(), "launch")
    t_up, t_returned = wait_ports(tool.ports, t0 + LAUNCH_DEADLINE, launcher)
    if (code := launcher.wait()) != 0:
        raise RuntimeError(f"{tool.launch_argv()} exited {code}; see {tool.dir}/launch.out")
    res.ports_up_s.append(t_up - t0)
    res.launch_returned_s.append(t_returned - t0)
    return find_daemon(tool.ports, time.monotonic() + 10)


def kill_and_time(tool: Tool, daemon: psutil.Process, rounds: int, res: Result) -> None:
    """kill -9 one instance -> its port accepts again; a different instance each round."""
    for i in range(rounds):
        port = tool.ports[(i * tool.n) // rounds]
        victim = instances_of(daemon)[port]
        t_kill = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        deadline = t_kill + RESTART_DEADLINE
        # The old process must be dead first: until it is, its socket still accepts.
        while not (gone(victim) and accepts(port)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tool.name}: port {port} not back after kill -9")
            time.sleep(POLL)
        res.restart_s.append(time.monotonic() - t_kill)
        time.sleep(0.3)
    time.sleep(1.5)  # supervisord counts a process as started after startsecs=1


def stop(tool: Tool, daemon: psutil.Process, res: Result) -> None:
    """Stop command -> every instance pid gone (also: command returned, daemon gone)."""
    procs = list(instances_of(daemon).values())
    if len(procs) != tool.n:
        raise RuntimeError(f"{tool.name}: {len(procs)} instances running, expected {tool.n}")
    t0 = time.monotonic()
    stopper = tool.run(tool.stop_argv(), "stop")
    deadline = t0 + STOP_DEADLINE
    t_instances = t_cmd = t_daemon = 0.0
    while not (t_instances and t_cmd and t_daemon):
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{tool.name}: not stopped after {STOP_DEADLINE}s")
        procs = [p for p in procs if not gone(p)]
        if not t_instances and not procs:
            t_instances = now
        if not t_cmd and stopper.poll() is not None:
            t_cmd = now
        if not t_daemon and gone(daemon):
            t_daemon = now
        time.sleep(5 * POLL)
    if stopper.returncode != 0:
        raise RuntimeError(f"{tool.stop_argv()} exited {stopper.returncode}")
    res.stop_s.append(t_instances - t0)
    res.stop_returned_s.append(t_cmd - t0)
    res.daemon_gone_s.append(t_daemon - t0)


def cycle(tool: Tool, res: Result, *, restarts: int, idle: float) -> None:
    """One launch .. stop of one tool; restarts and idle CPU only when asked (the first cycle)."""
    BUSY.append(psutil.cpu_percent(interval=0.5))
    daemon = launch(tool, res)
    say(f"  {tool.name:<11} N={tool.n:<3} all ports {res.ports_up_s[-1]:.2f}s (pid {daemon.pid})")
    time.sleep(3.0 if tool.health else 1.0)  # start-up work settled, first health checks done
    res.daemon_rss_mb.append(daemon.memory_info().rss / 2**20)
    if idle > 0:
        res.idle_cpu_pct.append(idle_cpu(daemon, idle))
    if restarts > 0:
        kill_and_time(tool, daemon, restarts, res)
    stop(tool, daemon, res)


# --- floors: the same work without a supervisor --------------------------------------------------


@dataclass
class Floor:
    """What any supervisor pays anyway on this machine: the instances' own start-up."""

    n: int
    loop_ports_up_s: list[float] = field(default_factory=list)  # shell loop -> all ports accept
    spawn_to_listen_s: list[float] = field(default_factory=list)  # one server -> its port


def shell_loop(work: Path, n: int, base: int, rep: int, floor: Floor) -> None:
    d = work / f"loop-{n}-{rep}"
    d.mkdir()
    script = (
        f"for p in $(seq {base} {base + n - 1}); do "
        "python3 -m http.server $p --bind 127.0.0.1 >/dev/null 2>&1 & done; wait"
    )
    t0 = time.monotonic()
    shell = subprocess.Popen(["bash", "-c", script], cwd=d, stdin=subprocess.DEVNULL)
    try:
        t_up, _ = wait_ports(range(base, base + n), t0 + LAUNCH_DEADLINE)
        floor.loop_ports_up_s.append(t_up - t0)
    finally:
        kids = psutil.Process(shell.pid).children()
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                kid.terminate()
        psutil.wait_procs(kids, timeout=10)
        shell.wait(timeout=10)


def spawn_to_listen(work: Path, port: int, rounds: int, floor: Floor) -> None:
    for _ in range(rounds):
        argv = ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        t0 = time.monotonic()
        server = subprocess.Popen(
            argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            t_listen, _ = wait_ports([port], t0 + 10)
            floor.spawn_to_listen_s.append(t_listen - t0)
        finally:
            server.terminate()
            server.wait(timeout=10)
        time.sleep(0.2)


# --- report ---------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f}{unit}"


# (label, attribute, unit); lower is better for all of them. Medians over the samples.
ROWS: list[tuple[str, str, str]] = [
    ("all ports accept, from launch", "ports_up_s", " s"),
    ("daemon RSS, all up", "daemon_rss_mb", " MB"),
    ("restart after kill -9", "restart_s", "ms"),
    ("stop all, until instance pids gone", "stop_s", " s"),
    ("idle CPU of daemon, no health checks", "idle_cpu_pct", " %"),
]


def table(results: list[Result], markdown: bool) -> str:
    by = {(r.tool, r.n): r for r in results if not r.health}
    ns = sorted({n for _, n in by})
    head = ["metric (median)", "N", "corral", "supervisord", "corral/supervisord"]
    lines: list[list[str]] = []
    for label, attr, unit in ROWS:
        for n in ns:
            c, s = by.get(("corral", n)), by.get(("supervisord", n))
            cv = c.median(attr) if c else float("nan")
            sv = s.median(attr) if s else float("nan")
            ratio = f"{cv / sv:.2f}" if sv and cv == cv and sv == sv else "-"
            lines.append([label, str(n), _fmt(cv, unit), _fmt(sv, unit), ratio])
    for r in results:
        if r.health:
            label = "idle CPU of daemon, http health every 2s"
            cpu = _fmt(r.median("idle_cpu_pct"), " %")
            lines.append([label, str(r.n), cpu, "n/a (no checks)", "-"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * 4) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in lines]
        return "\n".join(out)
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *lines])


DETAILS: list[tuple[str, str, float, int]] = [
    ("all ports accept (s)", "ports_up_s", 1.0, 2),
    (
        "launch command returned (s; `up -d` waits for ready, supervisord not)",
        "launch_returned_s",
        1.0,
        2,
    ),
    ("daemon RSS (MB)", "daemon_rss_mb", 1.0, 1),
    ("restart after kill -9 (ms)", "restart_s", 1000.0, 0),
    ("stop: every instance pid gone (s)", "stop_s", 1.0, 2),
    ("stop: stop command returned (s)", "stop_returned_s", 1.0, 2),
    ("stop: daemon gone (s)", "daemon_gone_s", 1.0, 2),
    ("idle CPU, no health checks (%)", "idle_cpu_pct", 1.0, 2),
]


def details(results: list[Result], floors: list[Floor]) -> str:
    out = ["every sample:"]
    plain = [r for r in results if not r.health]
    for label, attr, scale, digits in DETAILS:
        out.append(f"  {label}:")
        out += [f"    {r.tool:<11} N={r.n:<3} {r.spread(attr, scale, digits)}" for r in plain]
    for r in results:
        if r.health:
            out.append(
                f"  corral N={r.n} health-checked: all ports {r.spread('ports_up_s')} s, "
                f"daemon RSS {r.spread('daemon_rss_mb', digits=1)} MB, "
                f"idle CPU {r.spread('idle_cpu_pct')} %"
            )
    if floors:
        out.append("floors, no supervisor (same interpreter, interleaved with the runs above):")
        for f in floors:
            loop = " ".join(f"{x:.2f}" for x in f.loop_ports_up_s)
            out.append(f"  plain shell loop N={f.n:<3} -> all ports accept (s): {loop}")
        spawn = " ".join(f"{x * 1000:.0f}" for f in floors for x in f.spawn_to_listen_s)
        out.append(f"  one python3 -m http.server, exec -> port accepts (ms): {spawn}")
    if BUSY:
        quiet = max(BUSY) < 25
        note = "" if quiet else "  <- something else was running: start/stop numbers are noisy"
        out.append(
            f"machine CPU busy before each cycle (%): {min(BUSY):.0f} .. {max(BUSY):.0f}{note}"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="a fresh temp dir (all state here)")
    p.add_argument("--supervisord-bin", type=Path, help="dir with supervisord and supervisorctl")
    p.add_argument("--corral", default="corral", help="the corral command")
    p.add_argument("--ns", default="20,100", help="instance counts, comma-separated")
    p.add_argument("--reps", type=int, default=3, help="launch/stop cycles per tool and N")
    p.add_argument("--restarts", type=int, default=5, help="kill -9 rounds (first cycle)")
    p.add_argument("--idle", type=float, default=5.0, help="idle CPU window, no health checks")
    p.add_argument("--idle-health", type=float, default=10.0, help="idle CPU, health (0: skip)")
    p.add_argument("--health-n", type=int, default=100, help="instances for the health run")
    p.add_argument("--no-floor", action="store_true", help="skip the shell-loop floor")
    p.add_argument("--json", type=Path, help="also write every sample here")
    p.add_argument("--cleanup", action="store_true", help="only stop leftovers under --work")
    args = p.parse_args(argv)
    work: Path = args.work.resolve()
    if args.cleanup:
        left = cleanup(work)
        if left:
            say(f"cleanup: stopped {left} leftover process(es)")
        return 0
    if args.supervisord_bin is None:
        p.error("--supervisord-bin is required")
    Corral.bin = args.corral
    Supervisord.bin_dir = args.supervisord_bin
    taken: set[int] = set()
    results: list[Result] = []
    floors: list[Floor] = []

    def ports(n: int) -> int:
        return free_range(n, 20000, taken)

    try:
        for n in [int(x) for x in args.ns.split(",")]:
            res: dict[type[Tool], Result] = {c: Result(c.name, n) for c in (Corral, Supervisord)}
            results += res.values()
            floor = Floor(n)
            for rep in range(args.reps):
                # Alternate who goes first, so a noisy moment does not always hit the same tool.
                order = (Corral, Supervisord) if rep % 2 == 0 else (Supervisord, Corral)
                for cls in order:
                    first = rep == 0
                    cycle(
                        cls(work, n, ports(n), rep),
                        res[cls],
                        restarts=args.restarts if first else 0,
                        idle=args.idle if first else 0.0,
                    )
                if not args.no_floor:
                    shell_loop(work, n, ports(n), rep, floor)
                    say(f"  shell loop  N={n:<3} all ports {floor.loop_ports_up_s[-1]:.2f}s")
            if not args.no_floor:
                spawn_to_listen(work, ports(1), 5, floor)
                floors.append(floor)
        if args.idle_health > 0:
            health = Result("corral", args.health_n, health=True)
            results.append(health)
            tool = Corral(work, args.health_n, ports(args.health_n), 0, health=True)
            cycle(tool, health, restarts=0, idle=args.idle_health)
    finally:
        cleanup(work)
    print()
    print(table(results, markdown=False))
    print()
    print(details(results, floors))
    print()
    print(table(results, markdown=True))
    if args.json:
        raw = {"results": [asdict(r) for r in results], "floors": [asdict(f) for f in floors]}
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was already stopped in main's `finally`
        sys.exit(130)

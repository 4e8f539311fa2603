"""Start a distributed training job on MXNet's parameter server (ps-lite kvstore dist_sync).

    python -m lib.tools.launch -n WORKERS -s SERVERS [--hosts FILE [--ssh]] -- <train command>

MXNet's own tools/launch.py is not in the wheel and its dmlc-tracker does not run on Python 3.11;
this launcher does the same job. A ps-lite job is 1 scheduler, SERVERS servers and WORKERS workers,
each a process told its part by DMLC_* environment variables: DMLC_ROLE (scheduler | server | worker),
DMLC_PS_ROOT_URI / DMLC_PS_ROOT_PORT (where the scheduler listens), DMLC_NUM_WORKER,
DMLC_NUM_SERVER and DMLC_INTERFACE (the network interface ps-lite binds to). Scheduler and servers
are MXNet itself: importing mxnet with DMLC_ROLE=scheduler or server runs that node until the job
ends. Workers run <train command>, whose training must use a dist kvstore (TRAIN.KVSTORE: dist_sync
or dist_device_sync). Each worker also gets DMLC_WORKER_ID (its index here, the prefix of its
output); its kvstore rank is assigned by the scheduler and may differ (lib.train.distributed).

Local mode (no --hosts): everything on this machine over loopback, on a free port. Output lines are
prefixed with "[worker I]", "[server I]", "[scheduler]". Workers get OMP_NUM_THREADS = cores /
WORKERS (at least 1) and the scheduler and servers 1, unless you set OMP_NUM_THREADS yourself.

Hosts mode (--hosts FILE): one host per line, `[user@]host[:ssh_port] [slots=N]`, '#' comments.
The first host runs the scheduler (its name or address as written must be reachable from every
host: write an IP if needed) on --port; server i runs on host i mod H; workers fill the hosts'
slots in order (a host without slots= has 1) when any line gives slots=, otherwise worker i runs on
host i mod H. Without --ssh the per-host commands (ssh + cd + environment + command) are printed,
one per process; with --ssh they are run, supervised as in local mode. Every host needs the project
at the same path (the current folder) and the same Python (--python for the scheduler/servers).
DMLC_*, PYTHONPATH, OMP_NUM_THREADS and MXNET_* / PS_* variables set here are passed on, and
--env NAME[=VALUE] adds more. ssh runs with -tt, so that stopping the launcher hangs up the remote
processes too.

The job ends when every worker has exited 0 (the scheduler and servers then stop by themselves;
they get --grace seconds before being terminated) or at the first failure: a worker exiting
non-zero, a server or the scheduler exiting while workers run, a worker still running --grace
seconds after another exited 0 (a worker that never joins the kvstore leaves the others waiting
forever; the same bound applies after a server or the scheduler exited 0), --timeout, Ctrl-C or
SIGTERM. Then every process group gets SIGTERM, --grace seconds,
SIGKILL, and is reaped. Exit code: 0; the failed process's exit code (128 + signal if it was
killed) with its last error line; 124 on --timeout; 130 / 143 on Ctrl-C / SIGTERM; 2 for a usage
error of the launcher.
"""
import argparse
import ctypes
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from lib import THREADS_SOURCE
from lib.runtime import cpu_count

DEFAULT_PORT = 9091
FORWARDED_ENV = re.compile(r"^(PYTHONPATH|OMP_NUM_THREADS|MXNET_.*|PS_.*|DMLC_.*)$")
HOST_LINE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>\d+))?"
                       r"(?:\s+slots=(?P<slots>\d+))?$")
READ_CHUNK = 65536
POLL_SECONDS = 0.2


class UsageError(Exception):
    """A mistake in the launcher's own arguments or hosts file (exit 2, one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    parser = _Parser(prog="python -m lib.tools.launch", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True,
                     usage="python -m lib.tools.launch -n WORKERS -s SERVERS [--hosts FILE [--ssh]] "
                           "[options] -- <train command>")
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="worker processes")
    parser.add_argument("-s", "--num-servers", type=int, default=1, help="parameter servers (default 1)")
    parser.add_argument("--hosts", help="hosts file: print (or with --ssh run) the per-host commands")
    parser.add_argument("--ssh", action="store_true", help="with --hosts: run the commands over ssh")
    parser.add_argument("--ssh-command", default="ssh -o BatchMode=yes -tt",
                        help="ssh program and options (default: %(default)s)")
    parser.add_argument("--port", type=int, help=f"scheduler port (local: a free one; hosts: {DEFAULT_PORT})")
    parser.add_argument("--interface", help="DMLC_INTERFACE, the network interface ps-lite binds to "
                                            "(local: lo; hosts: ps-lite's choice unless given)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python that runs the scheduler and servers (default: this one)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="extra environment for every process (repeatable)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="stop the whole job after this many seconds (0 = never)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds the scheduler/servers get to stop after the workers, and "
                             "processes get between SIGTERM and SIGKILL (default %(default)s)")
    return parser


def parse_args(argv):
    """(options, train command argv); UsageError for a mistake."""
    argv = list(argv)
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            build_parser().parse_args(argv)
        raise UsageError("no train command: put it after '--' (… -- python train.py --cfg …)")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(options)
    if not command:
        raise UsageError("no train command after '--'")
    if args.num_workers < 1:
        raise UsageError(f"-n {args.num_workers}: a job needs at least 1 worker")
    if args.num_servers < 1:
        raise UsageError(f"-s {args.num_servers}: a dist kvstore needs at least 1 server")
    if args.ssh and not args.hosts:
        raise UsageError("--ssh needs --hosts FILE")
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    if args.timeout < 0 or args.grace < 0:
        raise UsageError("--timeout and --grace must be >= 0")
    for item in args.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(=.*)?$", item, re.S):
            raise UsageError(f"--env {item!r}: expected NAME or NAME=VALUE")
    return args, command


# ----------------------------------------------------------------------------------------------
# hosts

class Host:
    def __init__(self, host, user=None, ssh_port=None, slots=None, line=0):
        self.host, self.user, self.ssh_port, self.slots, self.line = host, user, ssh_port, slots, line

    @property
    def target(self):
        return f"{self.user}@{self.host}" if self.user else self.host

    def __repr__(self):
        return f"Host({self.target!r}, ssh_port={self.ssh_port}, slots={self.slots})"


def read_hosts(path):
    """Parse a hosts file (see the module docstring); UsageError naming file and line."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--hosts {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    hosts = []
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        match = HOST_LINE.match(text)
        if not match:
            raise UsageError(f"{path}:{number}: cannot parse {text!r}: expected [user@]host[:ssh_port] [slots=N]")
        port = int(match.group("port")) if match.group("port") else None
        slots = int(match.group("slots")) if match.group("slots") else None
        if port is not None and not 0 < port < 65536:
            raise UsageError(f"{path}:{number}: ssh port {port} is not a TCP port")
        if slots == 0:
            raise UsageError(f"{path}:{number}: slots=0: a listed host needs at least one slot")
        hosts.append(Host(match.group("host"), match.group("user"), port, slots, number))
    if not hosts:
        raise UsageError(f"--hosts {path}: no host listed")
    return hosts


def place_workers(hosts, num_workers, path="hosts file"):
    """Host index of each worker: fill slots in order when any host gives slots=, else round-robin."""
    if not any(h.slots for h in hosts):
        return [i % len(hosts) for i in range(num_workers)]
    placement = []
    for index, host in enumerate(hosts):
        placement += [index] * (host.slots or 1)
    if len(placement) < num_workers:
        raise UsageError(f"{path} offers {len(placement)} worker slot(s) but -n asks for {num_workers} workers")
    return placement[:num_workers]


# ----------------------------------------------------------------------------------------------
# the processes of a job

class Proc:
    """One process of the job: role, its environment, and (once started) its state."""

    def __init__(self, role, index, argv, env, host=None):
        self.role, self.index, self.argv, self.env, self.host = role, index, argv, env, host
        self.popen = None
        self.returncode = None
        self.exited_at = None
        self.partial = {}
        self.last_line = {"stdout": "", "stderr": ""}

    @property
    def label(self):
        name = "scheduler" if self.role == "scheduler" else f"{self.role} {self.index}"
        return f"{name}@{self.host.host}" if self.host is not None else name

    def last_error_line(self):
        return self.last_line["stderr"] or self.last_line["stdout"] or "(no output)"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _extra_env(items):
    extra = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            extra[name] = value
        elif name in os.environ:
            extra[name] = os.environ[name]
    return extra


def _dmlc_env(role, root_uri, port, args, index=None, interface=None):
    env = {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": root_uri, "DMLC_PS_ROOT_PORT": str(port),
           "DMLC_NUM_WORKER": str(args.num_workers), "DMLC_NUM_SERVER": str(args.num_servers)}
    if interface:
        env["DMLC_INTERFACE"] = interface
    if role == "worker":
        env["DMLC_WORKER_ID"] = str(index)
    elif role == "server":
        env["DMLC_SERVER_ID"] = str(index)
    return env


def plan_local(args, command):
    """The processes of a job on this machine (loopback)."""
    port = args.port or free_port()
    base = dict(os.environ)
    base.update(_extra_env(args.env))
    user_threads = _user_set_threads()
    worker_threads = str(max(1, cpu_count() // args.num_workers))
    interface = args.interface or "lo"
    node = [args.python, "-c", "import mxnet"]
    procs = []

    def env_for(role, index=None):
        env = dict(base)
        env.update(_dmlc_env(role, "127.0.0.1", port, args, index, interface))
        if interface == "lo":
            env["DMLC_NODE_HOST"] = "127.0.0.1"
        if not user_threads:
            env["OMP_NUM_THREADS"] = worker_threads if role == "worker" else "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    procs.append(Proc("scheduler", 0, node, env_for("scheduler")))
    procs += [Proc("server", i, node, env_for("server", i)) for i in range(args.num_servers)]
    procs += [Proc("worker", i, list(command), env_for("worker", i)) for i in range(args.num_workers)]
    return procs, port


def _user_set_threads():
    """True when the user chose a thread count (``import lib`` sets OMP_NUM_THREADS otherwise)."""
    return THREADS_SOURCE == "user"


def _remote_command(env, argv, cwd):
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return f"cd {shlex.quote(cwd)} && env {assignments} {shlex.join(argv)}"


def plan_hosts(args, command, hosts):
    """The processes of a multi-host job: each an ssh command running one node on its host."""
    port = args.port or DEFAULT_PORT
    root = hosts[0].host
    cwd = os.getcwd()
    forwarded = {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}
    if not _user_set_threads():  # `import lib` set it to THIS machine's core count: let each host choose
        forwarded.pop("OMP_NUM_THREADS", None)
    forwarded.update(_extra_env(args.env))
    ssh = shlex.split(args.ssh_command)
    if not ssh:
        raise UsageError("--ssh-command is empty")
    node = [args.python, "-c", "import mxnet"]
    workers_on = place_workers(hosts, args.num_workers, args.hosts)
    procs = []

    def add(role, index, host, argv):
        env = dict(forwarded)
        env.update(_dmlc_env(role, root, port, args, index, args.interface))
        env.setdefault("PYTHONUNBUFFERED", "1")
        remote = _remote_command(env, argv, cwd)
        ssh_argv = ssh + (["-p", str(host.ssh_port)] if host.ssh_port else []) + [host.target, remote]
        proc = Proc(role, index, ssh_argv, dict(os.environ), host)
        procs.append(proc)

    add("scheduler", 0, hosts[0], node)
    for i in range(args.num_servers):
        add("server", i, hosts[i % len(hosts)], node)
    for i in range(args.num_workers):
        add("worker", i, hosts[workers_on[i]], list(command))
    return procs, root, port


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if the launcher dies (even by SIGKILL). Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Job:
    """Start the processes, relay their output with prefixes, stop everything at the first failure."""

    def __init__(self, procs, timeout=0.0, grace=30.0, out=None, err=None):
        self.procs = procs
        self.timeout = timeout
        self.grace = grace
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.selector = selectors.DefaultSelector()
        self.interrupted = None

    # -- output ---------------------------------------------------------------------------------
    def _emit(self, proc, stream_name, line):
        line = line.rstrip("\r")
        if line.strip():
            proc.last_line[stream_name] = line.strip()
        target = self.err if stream_name == "stderr" else self.out
        target.write(f"[{proc.label}] {line}\n")
        target.flush()

    def _read(self, key):
        proc, stream_name = key.data
        try:
            chunk = os.read(key.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(key.fileobj)
            key.fileobj.close()
            rest = proc.partial.pop(stream_name, b"")
            if rest:
                self._emit(proc, stream_name, rest.decode("utf-8", "replace"))
            return
        data = proc.partial.get(stream_name, b"") + chunk
        *lines, rest = data.split(b"\n")
        proc.partial[stream_name] = rest
        for line in lines:
            self._emit(proc, stream_name, line.decode("utf-8", "replace"))

    def _pump(self, seconds):
        if not self.selector.get_map():
            time.sleep(seconds)
            return
        for key, _ in self.selector.select(timeout=seconds):
            self._read(key)

    def _drain(self, seconds):
        """Read what the exited processes left in their pipes (bounded: a grandchild may hold them)."""
        deadline = time.monotonic() + seconds
        while self.selector.get_map() and time.monotonic() < deadline:
            self._pump(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    # -- processes ------------------------------------------------------------------------------
    def _start(self, proc):
        proc.popen = subprocess.Popen(
            proc.argv, env=proc.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        for stream, name in ((proc.popen.stdout, "stdout"), (proc.popen.stderr, "stderr")):
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream, selectors.EVENT_READ, (proc, name))

    def _poll(self):
        now = time.monotonic()
        for proc in self.procs:
            if proc.popen is not None and proc.returncode is None:
                code = proc.popen.poll()
                if code is not None:
                    proc.returncode, proc.exited_at = code, now

    def _signal_groups(self, sig, only_running=True):
        for proc in self.procs:
            if proc.popen is None or (only_running and proc.returncode is not None):
                continue
            try:
                os.killpg(proc.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _alive(self):
        return [p for p in self.procs if p.popen is not None and p.returncode is None]

    def _stop_all(self):
        """SIGTERM every process group, wait up to grace, SIGKILL the rest, reap all."""
        self._signal_groups(signal.SIGTERM, only_running=False)  # also children left by exited ones
        deadline = time.monotonic() + self.grace
        while self._alive() and time.monotonic() < deadline:
            self._pump(POLL_SECONDS)
            self._poll()
        if self._alive():
            self._signal_groups(signal.SIGKILL, only_running=False)
        for proc in self.procs:
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=10)
                except Exception:  # noqa: BLE001 - a process in uninterruptible sleep: nothing more to do
                    pass
        self._poll()
        self._drain(1.0)

    def _on_signal(self, signum, _frame):
        self.interrupted = signum

    # -- the job --------------------------------------------------------------------------------
    def run(self):
        """Run to the end; returns the launcher's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        started = time.monotonic()
        try:
            for proc in self.procs:
                try:
                    self._start(proc)
                except OSError as err:
                    self._stop_all()
                    self.err.write(f"launch: cannot start {proc.label} ({shlex.join(proc.argv[:1])}): "
                                   f"{err.strerror or err}\n")
                    return 2
            code = self._supervise(started)
            return code
        finally:
            for proc in self.procs:
                if proc.popen is not None and proc.popen.poll() is None:
                    self._stop_all()  # an exception above: never leave processes behind
                    break
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()

    def _supervise(self, started):
        workers = [p for p in self.procs if p.role == "worker"]
        nodes = [p for p in self.procs if p.role != "worker"]
        while True:
            self._pump(POLL_SECONDS)
            self._poll()
            now = time.monotonic()
            failed = [p for p in workers if p.returncode not in (None, 0)]
            if failed:
                return self._fail(min(failed, key=lambda p: p.exited_at))
            running = [p for p in workers if p.returncode is None]
            crashed = [p for p in nodes if p.returncode not in (None, 0)]
            if crashed and running:
                return self._fail(min(crashed, key=lambda p: p.exited_at), "exited while workers were running")
            if not running:
                return self._finish(nodes)
            # At the end of a job the servers may exit a moment before the workers, and no worker
            # leaves before the others (ps-lite's finalize is a barrier): past grace, something hangs.
            ended = [p for p in self.procs if p.returncode == 0]
            if ended and now - min(p.exited_at for p in ended) > self.grace:
                first = min(ended, key=lambda p: p.exited_at)
                self._stop_all()
                self.err.write(f"launch: {first.label} exited {self.grace:g} s ago but "
                               f"{', '.join(p.label for p in running)} still run(s): a worker that ends "
                               f"without joining the kvstore (TRAIN.KVSTORE not dist_sync?) leaves the "
                               f"others waiting; job stopped\n")
                return 1
            if self.interrupted is not None:
                name = signal.Signals(self.interrupted).name
                self.err.write(f"launch: {name}: stopping every process of the job\n")
                self.err.flush()
                self._stop_all()
                return 130 if self.interrupted == signal.SIGINT else 128 + self.interrupted
            if self.timeout and now - started > self.timeout:
                self.err.write(f"launch: the job ran longer than --timeout {self.timeout:g} s: stopping it\n")
                self.err.flush()
                self._stop_all()
                return 124

    def _fail(self, proc, what=None):
        code = proc.returncode
        self._drain(1.0)   # its last lines, to name the error
        self._stop_all()
        reason = what or "failed"
        self.err.write(f"launch: {proc.label} {reason} ({_describe_exit(code)}): {proc.last_error_line()}\n")
        self.err.flush()
        if code is None or code == 0:
            return 1
        return code if code > 0 else 128 - code

    def _finish(self, nodes):
        deadline = time.monotonic() + self.grace
        while any(p.returncode is None for p in nodes) and time.monotonic() < deadline:
            self._pump(POLL_SECONDS)
            self._poll()
        late = [p.label for p in nodes if p.returncode is None]
        self._stop_all()
        if late:
            self.err.write(f"launch: {', '.join(late)} still running {self.grace:g} s after the workers "
                           f"finished: terminated\n")
        self.err.flush()
        return 0


def _check_command(command):
    program = command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise UsageError(f"cannot run {program!r}: no such executable file")
    elif shutil.which(program) is None:
        raise UsageError(f"cannot run {program!r}: command not found")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, command = parse_args(argv)
        if args.hosts:
            hosts = read_hosts(args.hosts)
            procs, root, port = plan_hosts(args, command, hosts)
            if not args.ssh:
                print(f"# ps-lite job: scheduler on {root}:{port}, {args.num_servers} server(s), "
                      f"{args.num_workers} worker(s) on {len(hosts)} host(s); run each command below "
                      f"(or pass --ssh to let the launcher run and supervise them)")
                for proc in procs:
                    print(f"# {proc.label}")
                    print(shlex.join(proc.argv))
                return 0
            _check_command(shlex.split(args.ssh_command))
        else:
            _check_command(command)
            procs, port = plan_local(args, command)
            root = "127.0.0.1"
    except UsageError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    where = f"{len(hosts)} host(s) over ssh" if args.hosts else "this machine"
    print(f"launch: scheduler {root}:{port}, {args.num_servers} server(s), {args.num_workers} worker(s) on "
          f"{where}", file=sys.stderr, flush=True)
    return Job(procs, timeout=args.timeout, grace=args.grace).run()


if __name__ == "__main__":
    sys.exit(main())

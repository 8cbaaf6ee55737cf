"""A stand-in for the NixOS test driver's Machine, over systemd-nspawn.

The subset of nixos/lib/test-driver/src/test_driver (machine/__init__.py,
driver.py) that the testScripts of nix/tests use, with the same semantics:

  execute(cmd)              (status, stdout) of `bash -c "set -eo pipefail;
                            source /etc/profile; set -u; cmd"` as the driver's
                            NspawnMachine runs it (bash, as on NixOS; Debian's
                            sh is dash), under `timeout` (900 s by default)
  succeed(*cmds)            runs each; raises on a non-zero status; the
                            concatenated stdout
  fail(*cmds)               raises when one exits 0
  wait_until_succeeds(cmd, timeout=900) / wait_until_fails
                            retried every second (retry() below)
  wait_for_unit(unit, user=None, timeout=900)
                            until ActiveState=active; raises at once on
                            "failed", and on "inactive" with no job queued
  wait_for_open_port(port, addr="localhost", timeout=900), wait_for_closed_port
                            `nc -z addr port`
  wait_for_file, systemctl(q, user=None), get_unit_info, get_unit_property,
  require_unit_state, start_job, stop_job, sleep, start, shutdown,
  wait_for_shutdown
  start_all(), subtest(name), retry(fn, timeout) and `os`, as the driver's
  test symbols; each machine under its node name

Each Machine is a container booted with `systemd-nspawn --boot` in a network
namespace of its own (the harness joins them with a veth pair and writes
/etc/hosts). Commands run through nsenter (as the driver's NspawnMachine
does) with the container's capability bounding set, so that no command can
act on the host beyond what the container itself may (nsenter alone keeps
the host's full set: `date -s` would set the host's clock).

`date -s WHEN` as a whole command is mapped (nodemap.CLOCK_JUMP): the
machine's simulated wall clock moves to WHEN and the units of the node's
timers that elapse on the way are started; the clock itself does not move.
Any other command that nodemap.NOT_RUNNABLE names is refused before it runs:
NotRunnableHere, which the harness reports with the testScript line.
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import nodemap


class RequestedAssertionFailed(AssertionError):
    """As the driver's: a command or wait the script asked for failed."""


class NotRunnableHere(Exception):
    def __init__(self, command, reason):
        super().__init__(f"cannot run here: {command!r}: {reason}")
        self.command = command
        self.reason = reason


# What systemd-nspawn keeps in a container's bounding set by default, plus
# CAP_NET_ADMIN (Machine.start grants it with --capability): systemd-nspawn(1).
CONTAINER_CAPS = [
    "audit_control", "audit_write", "chown", "dac_override", "dac_read_search", "fowner",
    "fsetid", "ipc_owner", "kill", "lease", "linux_immutable", "mknod", "net_bind_service",
    "net_broadcast", "net_raw", "setfcap", "setgid", "setpcap", "setuid", "sys_admin",
    "sys_boot", "sys_chroot", "sys_nice", "sys_ptrace", "sys_resource", "sys_tty_config",
    "net_admin",
]


def retry(fn, timeout_seconds=900):
    """The driver's retry(): fn(False) every second until it is true or the
    time is up, then one last fn(True)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(f"action timed out after {elapsed:.2f} seconds (timeout={timeout_seconds})")


class Log:
    def __init__(self, stream):
        self.stream = stream
        self.t0 = time.monotonic()

    def __call__(self, msg):
        self.stream.write(f"[{time.monotonic() - self.t0:7.1f}s] {msg}\n")
        self.stream.flush()


class Machine:
    def __init__(self, name, root, netns, run_dir, log, calendar_timers=()):
        self.name = name
        self.calendar_timers = list(calendar_timers)  # nodemap.calendar_timers
        self.clock = None  # the simulated wall clock (epoch s) after a jump
        self.clock_jumps = []  # (WHEN, units started), for the report
        self.root = root
        self.netns = netns
        self.run_dir = run_dir
        self.log = lambda msg: log(f"{name}: {msg}")
        self.process = None
        self.pid = None  # the container's PID 1, as a host pid
        self.connected = False
        self.machine = f"cs-{name}-{os.getpid()}"
        self.cgroups = [f"/sys/fs/cgroup/unified/{self.machine}", f"/sys/fs/cgroup/systemd/{self.machine}"]
        if not os.path.isdir("/sys/fs/cgroup/unified"):  # a pure cgroup v2 host
            self.cgroups = [f"/sys/fs/cgroup/{self.machine}"]

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    # --- lifecycle --------------------------------------------------------
    def is_up(self):
        return self.process is not None and self.process.poll() is None

    def start(self):
        """Boot the container; asynchronous, as the driver's start()."""
        if self.process is not None:
            return
        self.log("starting container")
        fuse = os.path.join(self.run_dir, f"{self.name}.fuse")
        if not os.path.exists(fuse):
            # Its own /dev/fuse node, 0666 as NixOS's programs.fuse makes it,
            # so that nothing inside changes the host's node.
            os.mknod(fuse, 0o666 | 0o020000, os.makedev(10, 229))
            os.chmod(fuse, 0o666)
        # Each container in a cgroup of its own: nspawn makes payload/ and
        # supervisor/ below the cgroup it starts in.
        for cg in self.cgroups:
            os.makedirs(cg, exist_ok=True)
        enter = "; ".join(f"echo $$ > {shlex.quote(cg)}/cgroup.procs" for cg in self.cgroups)
        argv = ["sh", "-c", enter + '; exec "$@"', "sh",
                "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                f"--network-namespace-path=/run/netns/{self.netns}",
                # nspawn keeps CAP_NET_ADMIN for --private-network only, not
                # for a network namespace path: without it the container's
                # systemd runs PrivateNetwork=yes units (the server's seal
                # service) in the shared namespace ("we lack privileges for
                # network namespace, proceeding without"), which NixOS's
                # systemd, holding every capability, never does.
                "--capability=CAP_NET_ADMIN",
                f"--bind={fuse}:/dev/fuse", "-D", self.root, "-M", self.machine,
                f"--hostname={self.name}", "--boot", "--console=pipe"]
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        console = open(os.path.join(self.run_dir, f"{self.name}.console.log"), "wb")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                        stderr=subprocess.STDOUT, env=env)
        console.close()

    def _container_pid(self):
        """nspawn's child that is PID 1 of its own pid namespace."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        for child in children:
            try:
                with open(f"/proc/{child}/status") as f:
                    nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")]
            except OSError:
                continue
            if nspid and len(nspid[0]) == 2 and nspid[0][1] == "1":
                return int(child)
        return None

    def connect(self):
        """Wait until the container's systemd has finished booting (the
        driver waits for its backdoor shell, which multi-user.target starts)."""
        if self.connected:
            return
        self.start()
        deadline = time.monotonic() + 300
        while self.pid is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: systemd-nspawn exited with {self.process.returncode}; "
                                   f"see {self.name}.console.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no container after 300 s")
            self.pid = self._container_pid()
            time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            rc, state = self._run("systemctl is-system-running --wait", timeout=60)
            state = state.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{self.name}: systemd did not finish booting: {state!r}")
        if state == "degraded":
            _, failed = self._run("systemctl --failed --no-legend --plain | cut -d' ' -f1")
            self.log(f"booted degraded; failed units: {failed.split()}")
        self.log("booted")
        self.connected = True

    def shutdown(self):
        """Power the container off and wait for it to exit."""
        if not self.is_up():
            return
        self._run("systemctl poweroff --no-block", timeout=30)
        self.wait_for_shutdown()

    def wait_for_shutdown(self, timeout=120):
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log("did not power off; killing nspawn")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                if self.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self.pid = None
        self.connected = False

    def release(self):
        """End the container (if up) and remove its cgroups."""
        if self.is_up():
            if self.pid:
                with contextlib.suppress(Exception):
                    self._run("systemctl poweroff --no-block", timeout=10)
            self.wait_for_shutdown(timeout=60)
        for cg in self.cgroups:
            for sub, _dirs, _files in sorted(os.walk(cg), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)

    # --- commands -----------------------------------------------------------
    def _run(self, command, timeout=900):
        """(status, stdout) of command in the container, without the checks."""
        script = f"set -eo pipefail; source /etc/profile; set -u; {command}"
        inner = ["/usr/bin/env", "-i", "HOME=/root", "USER=root", "LOGNAME=root", "TERM=dumb"]
        if timeout is not None:
            inner += ["/usr/bin/timeout", "--kill-after=10", str(timeout)]
        inner += ["/bin/bash", "-c", script]
        bounding = "-all," + ",".join("+" + c for c in CONTAINER_CAPS)
        argv = ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
                "/usr/bin/setpriv", f"--bounding-set={bounding}", "--"] + inner
        stderr = open(os.path.join(self.run_dir, f"{self.name}.stderr.log"), "ab")
        try:
            cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                timeout=None if timeout is None else timeout + 30)
        finally:
            stderr.close()
        return cp.returncode, cp.stdout.decode(errors="replace")

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        jump = nodemap.CLOCK_JUMP.match(command)
        if jump:
            return self.jump_clock(jump.group(1) if jump.group(1) is not None else jump.group(2))
        for pattern, reason in nodemap.NOT_RUNNABLE:
            if pattern.search(command):
                raise NotRunnableHere(command, reason)
        self.connect()
        rc, out = self._run(command, timeout)
        self.log(f"exit {rc}: {command}" + (f"\n    {out.strip()[:2000]}" if out.strip() else ""))
        return rc, out

    def _checked(self, command):
        rc, out = self._run(command, timeout=60)
        if rc != 0:
            raise RuntimeError(f"clock jump: `{command}` exited {rc}: {out.strip()[:300]}")
        return out.strip()

    def jump_clock(self, when):
        """`date -s WHEN` mapped as nodemap.CLOCK_JUMP says: start the
        Triggers= unit of each active timer of the node whose next elapse
        after the simulated clock is at most WHEN; (0, WHEN as date prints it)."""
        self.connect()
        target = int(self._checked(f"date -d {shlex.quote(when)} +%s"))
        base = self.clock if self.clock is not None else int(self._checked("date +%s"))
        due = {}  # timer -> (first elapse in (base, target], its units)
        for timer in self.calendar_timers:
            show = self._checked(f"systemctl show -p ActiveState -p Triggers -p TimersCalendar {timer}")
            props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
            if props.get("ActiveState") != "active":
                continue
            for spec in re.findall(r"OnCalendar=(.*?) ;", show):
                out = self._checked(f"systemd-analyze calendar --base-time=@{base} {shlex.quote(spec)}")
                m = re.search(r"Next elapse: (.+)", out)
                if not m or m.group(1).strip() == "never":
                    continue
                at = int(self._checked(f"date -d {shlex.quote(m.group(1).strip())} +%s"))
                if base < at <= target and (timer not in due or at < due[timer][0]):
                    due[timer] = (at, props.get("Triggers", "").split())
        started = []
        for _at, units in sorted(due.values()):
            for unit in units:
                self._checked(f"systemctl start --no-block {shlex.quote(unit)}")
                started.append(unit)
        self.clock = target
        self.clock_jumps.append((when, started))
        self.log(f"clock jump to {when!r} simulated (nodemap.CLOCK_JUMP), started: {' '.join(started) or 'nothing'}")
        return 0, self._checked(f"date -d @{target}") + "\n"

    def succeed(self, *commands, timeout=None):
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status != 0:
                self.log(f"output: {out}")
                raise RequestedAssertionFailed(f"command `{command}` failed (exit code {status})")
            output += out
        return output

    def fail(self, *commands, timeout=None):
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status == 0:
                raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
            output += out
        return output

    def wait_until_succeeds(self, command, timeout=900):
        output = ""

        def check_success(_last_try):
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status == 0

        retry(check_success, timeout)
        return output

    def wait_until_fails(self, command, timeout=900):
        output = ""

        def check_failure(_last_try):
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status != 0

        retry(check_failure, timeout)
        return output

    def sleep(self, secs):
        self.succeed(f"sleep {secs}")

    def wait_for_file(self, filename, timeout=900):
        retry(lambda _: self.execute(f"test -e {filename}")[0] == 0, timeout)

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        retry(lambda _: self.execute(f"nc -z {addr} {port}")[0] == 0, timeout)

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        retry(lambda _: self.execute(f"nc -z {addr} {port}")[0] != 0, timeout)

    def systemctl(self, q, user=None):
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(f"su -l {user} --shell /bin/sh -c "
                                "$'XDG_RUNTIME_DIR=/run/user/`id -u` "
                                f"systemctl --user {q}'")
        return self.execute(f"systemctl {q}")

    def start_job(self, jobname, user=None):
        return self.systemctl(f"start {jobname}", user)

    def stop_job(self, jobname, user=None):
        return self.systemctl(f"stop {jobname}", user)

    def get_unit_info(self, unit, user=None):
        status, lines = self.systemctl(f'--no-pager show "{unit}"', user)
        if status != 0:
            raise RequestedAssertionFailed(f'retrieving systemctl info for unit "{unit}" failed with exit code {status}')
        pattern = re.compile(r"^([^=]+)=(.*)$")
        return dict(m.groups() for m in map(pattern.match, lines.split("\n")) if m)

    def get_unit_property(self, unit, prop, user=None):
        status, lines = self.systemctl(f'--no-pager show "{unit}" --property="{prop}"', user)
        if status != 0:
            raise RequestedAssertionFailed(f'retrieving systemctl property "{prop}" for unit "{unit}" '
                                           f"failed with exit code {status}")
        m = re.match(r"^([^=]+)=(.*)$", lines)
        assert m is not None and m[1] == prop, f"systemctl show produced invalid output: {lines}"
        return m[2]

    def require_unit_state(self, unit, require_state="active"):
        state = self.get_unit_info(unit)["ActiveState"]
        if state != require_state:
            raise RequestedAssertionFailed(f"Expected unit '{unit}' to to be in state "
                                           f"'{require_state}' but it is in state '{state}'")

    def wait_for_unit(self, unit, user=None, timeout=900):
        def check_active(_last_try):
            state = self.get_unit_property(unit, "ActiveState", user)
            if state == "failed":
                raise RequestedAssertionFailed(f'unit "{unit}" reached state "{state}"')
            if state == "inactive":
                _status, jobs = self.systemctl("list-jobs --full 2>&1", user)
                if "No jobs" in jobs:
                    info = self.get_unit_info(unit, user)
                    if info["ActiveState"] == state:
                        raise RequestedAssertionFailed(f'unit "{unit}" is inactive and there are no pending jobs')
            return state == "active"

        self.log(f"waiting for unit {unit}")
        retry(check_active, timeout)


class Driver:
    """Test symbols for one testScript, as driver.py's test_symbols()."""

    def __init__(self, machines, log):
        self.machines = sorted(machines, key=lambda m: m.name)
        self.log = log
        self.subtests = []

    def start_all(self):
        for machine in self.machines:
            machine.start()

    def join_all(self):
        for machine in self.machines:
            machine.wait_for_shutdown()

    @contextlib.contextmanager
    def subtest(self, name):
        self.log(f"subtest: {name}")
        self.subtests.append(name)
        try:
            yield
        except Exception as e:
            self.log(f'Test "{name}" failed with error: "{e}"')
            raise
        self.log(f"subtest ok: {name}")

    def symbols(self):
        symbols = {
            "start_all": self.start_all,
            "join_all": self.join_all,
            "subtest": self.subtest,
            "retry": retry,
            "os": os,
            "driver": self,
            "machines": self.machines,
        }
        for machine in self.machines:
            symbols[re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", machine.name)] = machine
        return symbols


def script_lines(exc, filename):
    """The testScript line numbers in exc's traceback, outermost first."""
    lines = []
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lines.append(tb.tb_lineno)
        tb = tb.tb_next
    return lines


if __name__ == "__main__":
    print(__doc__, file=sys.stderr)
    sys.exit(2)

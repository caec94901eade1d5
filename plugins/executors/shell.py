"""The persistent bash session behind ``Sandbox.run``.

Why one long-lived ``bash`` instead of one ``exec`` per command: an exec costs
50-70 ms on Docker and leaves a ``conmon`` behind on Podman, while a line
written to a waiting shell's stdin comes back in well under a millisecond; and
an agent expects a terminal, where ``cd``, ``export`` and functions carry over.

The protocol (all of it in :data:`_PRELUDE` and :meth:`BashSession.submit`):

* The command travels as *data*, never as shell source: a single-quoted
  assignment ``__tg_c='...'`` (or, above :data:`INLINE_LIMIT`, a file copied in
  with ``put_archive``, because bash reads a pipe one byte at a time), which
  the shell then ``source``s at top level. A syntax error, an unterminated
  quote or a heredoc cannot desynchronise the session, and ``declare`` makes
  globals as typed (it would make locals inside a wrapper function).
* The command's stdin is ``/dev/null``: one reading stdin sees EOF instead of
  eating the protocol. The shell's stderr is its stdout (``exec 2>&1``), so
  merged output keeps the true interleaving of stdout, stderr, job messages
  and ``set -x`` traces; the exec's own stderr (kept as fd 19) only carries
  the command's stderr when the sandbox asked for it separately.
* After the command a builtin ``printf`` writes ``\\x1e NONCE : SEQ : RC``; the
  host cuts the output there. The marker is assembled by ``printf`` at run
  time, so even ``set -x`` traces never contain it, and the helpers run with
  stderr sent to /dev/null so traces of them do not pollute the output.
* ``set -m`` gives every pipeline its own process group. On timeout a second,
  idle *control* shell (builtins only, so it works even when a fork bomb has
  used every pid) first signals the main shell (``USR1``: it arms a DEBUG trap
  that skips and unwinds the rest of the sourced command, loops of builtins
  included), then kills the process groups the command started. Background
  jobs of earlier commands (``jobs -p`` before each command) survive, like
  Ctrl-C in a terminal, unless the sandbox is at its pids limit. The shell
  then prints its marker and keeps its state. If it does not (a trap or
  ``exec`` of the user's got in the way, or it exited), it is killed and
  restarted, and the result says so (``shell_restarted``).
* Before and after every command the control shell reads the pids cgroup's
  count of failed forks. If it grew (a fork bomb, perhaps started in the
  background by an earlier command), every process the main shell started is
  killed, the ``fork: retry`` messages are dropped from the output, and one
  note says so; the shell and its state are kept.
* Output becomes text in one place, :func:`.output.printable` (control bytes
  escaped or summarised), so the store, trajectories and prompts agree.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import select
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from termigen_core.sandbox import CommandResult

from .output import STDERR, STDOUT, CappedOutput, FrameDecoder, MarkerScanner

log = logging.getLogger("termigen.executors.shell")

#: Commands longer than this (bytes) are copied into the container as a file
#: first: bash reads its stdin pipe byte by byte (~0.5 ms per KiB).
INLINE_LIMIT = 64 * 1024

#: How long the main shell gets to report after its command was killed.
KILL_GRACE_S = 3.0

#: The note on a timed-out command when the sandbox was at its pids limit (a fork bomb).
AT_LIMIT = "the sandbox was at its process limit, so background processes were killed too"

#: How long a new shell gets to say it is ready.
START_TIMEOUT_S = 30.0

#: Control-shell commands (kill a command, kill the shell) are quick; more means trouble.
CONTROL_TIMEOUT_S = 10.0

_PRELUDE = r"""
exec 19>&2 2>&1
__tg_n=@NONCE@; __tg_d=/tmp/.termigen-shell-@NONCE@; __tg_rc=0; __tg_seq=; __tg_armed=
mkdir -p "$__tg_d" 2>/dev/null
__tg_b() { __tg_seq=$1; jobs -p >"$__tg_d/jobs" 2>/dev/null; return $__tg_rc; }
__tg_e() {
  if [[ -n $__tg_armed ]]; then trap - DEBUG; shopt -u extdebug; __tg_armed=; fi
  __tg_seq=; __tg_rc=$2
  printf '\036%s:%s:%s\n' "$__tg_n" "$1" "$2"
  [ -z "$3" ] || printf '\036%s:%s:%s\n' "$__tg_n" "$1" "$2" >&19
  return $2
}
__tg_abort() {
  local s; read -r s < "$__tg_d/abort" 2>/dev/null
  [[ -n $__tg_seq && $s == "$__tg_seq" ]] || return 0
  __tg_armed=1; shopt -s extdebug; trap __tg_skip DEBUG
}
__tg_skip() { [[ $BASH_COMMAND == __tg_* || ${FUNCNAME[1]-} == __tg_* ]] && return 0; return 2; }
trap __tg_abort USR1
@JOBCONTROL@
printf '\036%s:ready:%s\n' "$__tg_n" "$$"
"""

#: Defined in both shells (the main shell uses them only when the control shell
#: could not start). ``__tg_limits`` reads the pids cgroup (``__tg_hits``: how
#: often a fork failed at the limit; current; max) and ``__tg_pids`` prints those
#: three after ``__tg:`` (read by :func:`_said`). ``__tg_kill`` stops command number ``$3`` of
#: the main shell ``$1`` (files in ``$2``; ``-``: no command, the shell is idle):
#: arms the shell's abort (``USR1``: a DEBUG trap that skips and unwinds the rest
#: of the command), then kills every process of the shell's session except the
#: shell and the background jobs listed in the jobs file (all of them when ``$4``
#: is ``all`` or the pids cgroup is nearly full: a fork bomb). It prints
#: ``__tg: KILLS ALL HITS``. Builtins only: it must work when no new process can be forked.
_KILLER = r"""
__tg_limits() {
  local l k v
  __tg_hits=0; __tg_cur=0; __tg_max=max
  for l in /sys/fs/cgroup/pids/pids /sys/fs/cgroup/pids; do
    if [ -r "$l.current" ] && [ -r "$l.max" ]; then
      read -r __tg_cur < "$l.current"; read -r __tg_max < "$l.max"
      while read -r k v; do [ "$k" = max ] && __tg_hits=$v; done 2>/dev/null < "$l.events"
      break
    fi
  done
}
__tg_pids() { __tg_limits; printf '__tg: %s %s %s\n' "$__tg_hits" "$__tg_cur" "$__tg_max"; }
__tg_kill() {
  local sp=$1 dir=$2 all=0 keep=" " l d pid pg sid n=0 pass hit
  if [ "$3" != - ]; then
    printf '%s\n' "$3" > "$dir/abort" 2>/dev/null
    kill -USR1 "$sp" 2>/dev/null
  fi
  __tg_limits
  if [ "$4" = all ]; then all=1; fi
  if [ "$__tg_max" != max ] && [ $((__tg_cur + 16)) -ge "$__tg_max" ]; then all=1; fi
  if [ "$all" != 1 ] && [ -r "$dir/jobs" ]; then
    while read -r l; do keep+="$l "; done < "$dir/jobs"
  fi
  for pass in 1 2 3 4 5 6; do
    hit=0
    for d in /proc/[0-9]*; do
      read -r l 2>/dev/null < "$d/stat" || continue
      pid=${l%% *}
      set -f; set -- ${l##*) }; set +f
      pg=$3; sid=$4
      [ "$sid" = "$sp" ] && [ "$pid" != "$sp" ] || continue
      [ "$1" = Z ] && continue
      case "$keep" in *" $pg "*) continue ;; esac
      if [ "$pg" = "$sp" ]; then kill -KILL "$pid" 2>/dev/null; else kill -KILL -"$pg" 2>/dev/null; fi
      hit=1; n=$((n + 1))
    done
    [ $hit = 1 ] || break
  done
  __tg_limits
  printf '__tg: %s %s %s\n' "$n" "$all" "$__tg_hits"
}
"""


class ShellUnavailable(Exception):
    """No shell can run in the sandbox (container gone, engine unreachable, no bash)."""


class CopyFailed(ShellUnavailable):
    """A long command could not be copied into the container (the shell itself is fine)."""


def _encode(command: str) -> bytes:
    """The command's bytes: NULs dropped (bash strings cannot hold them), undecodable bytes restored."""
    text = command.replace("\0", "")
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that were never bytes
        return text.encode("utf-8", errors="replace")


def _quote(command: str) -> bytes:
    """``command`` as one single-quoted bash word."""
    return b"'" + _encode(command).replace(b"'", b"'\\''") + b"'"


@dataclass
class _Pending:
    """One command in flight: where its bytes go and whether its markers arrived."""

    out: CappedOutput
    err: CappedOutput | None
    stdout_scan: MarkerScanner
    stderr_scan: MarkerScanner | None
    leftovers: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.stdout_scan.done and (self.stderr_scan is None or self.stderr_scan.done)

    def feed(self, stream: int, data: bytes) -> None:
        if stream == STDERR:
            if self.stderr_scan is not None:
                self.stderr_scan.feed(data)
            elif self.stdout_scan.done:  # merged: shell chatter after the command belongs to the next one
                self.leftovers.append((STDERR, data))
            else:
                self.out.add(data)
        else:
            self.stdout_scan.feed(data)

    def finish(self) -> None:
        for scan, stream in ((self.stdout_scan, STDOUT), (self.stderr_scan, STDERR)):
            if scan is None:
                continue
            scan.flush()
            if scan.leftover:
                self.leftovers.append((stream, scan.leftover))

    @property
    def exit_code(self) -> int | None:
        try:
            return int(self.stdout_scan.value or b"")
        except ValueError:
            return None


class BashSession:
    """One ``bash`` in an exec session, driven through its stdin with the marker protocol."""

    def __init__(self, api: Any, container_id: str, workdir: str, *, job_control: bool, extra: str = "") -> None:
        self.api = api
        self.container_id = container_id
        self.workdir = workdir
        self.job_control = job_control
        self.extra = extra
        self.nonce = secrets.token_hex(8)
        self.pid = ""
        self.exec_id = ""
        self.alive = False
        self._holder: Any = None  # docker-py's socket wrapper: keeps the HTTP response alive
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._stray: list[tuple[int, bytes]] = []
        self._seq = 0

    @property
    def seq(self) -> int:
        """Number of the last command submitted."""
        return self._seq

    @property
    def files_dir(self) -> str:
        return f"/tmp/.termigen-shell-{self.nonce}"

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start bash and wait for its ready marker; raise :class:`ShellUnavailable` if it never comes."""
        try:
            self.exec_id = self.api.exec_create(
                self.container_id, ["bash", "--noprofile", "--norc"],
                stdin=True, stdout=True, stderr=True, tty=False, workdir=self.workdir,
            )["Id"]
            holder = self.api.exec_start(self.exec_id, socket=True)
        except Exception as exc:  # noqa: BLE001 - container gone, engine down: all mean "no shell"
            raise ShellUnavailable(_describe(exc)) from exc
        self._holder = holder
        sock = getattr(holder, "_sock", holder)
        sock.setblocking(False)
        self._sock = sock
        self.alive = True
        prelude = _PRELUDE.replace("@NONCE@", self.nonce).replace("@JOBCONTROL@", "set -m" if self.job_control else "")
        pending = self._new_pending(b"ready", merge=True, limit=1 << 16)
        try:
            self._send((prelude + self.extra + "\n").encode(), time.monotonic() + START_TIMEOUT_S)
        except ShellUnavailable:
            status = "eof"
        else:
            status = self.pump(pending, time.monotonic() + START_TIMEOUT_S)
        if status != "done":
            said = pending.out.text().strip()
            self.close()
            raise ShellUnavailable(
                "bash did not start in the sandbox"
                + (f": {said[-500:]}" if said else " (is bash installed in the image, and is the container running?)")
            )
        self.pid = (pending.stdout_scan.value or b"").decode()

    def close(self) -> None:
        """Drop the connection; a thread blocked reading it wakes up (``shutdown``) and sees EOF."""
        self.alive = False
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thing in (self._sock, self._holder):
            try:
                if thing is not None:
                    thing.close()
            except Exception:  # noqa: BLE001 - closing a dead socket
                pass
        self._sock = None
        self._holder = None

    def exit_code(self, wait_s: float = 2.0) -> int | None:
        """The shell's exit code once it has exited (``None`` if unknown)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                info = self.api.exec_inspect(self.exec_id)
            except Exception:  # noqa: BLE001
                return None
            if not info.get("Running"):
                return info.get("ExitCode")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    # -- commands ----------------------------------------------------------------------

    def _new_pending(self, seq: bytes, *, merge: bool, limit: int) -> _Pending:
        out = CappedOutput(limit)
        err = None if merge else CappedOutput(limit)
        prefix = b"\x1e" + self.nonce.encode() + b":" + seq + b":"
        pending = _Pending(out, err, MarkerScanner(prefix, out), None if merge else MarkerScanner(prefix, err))  # type: ignore[arg-type]
        stray, self._stray = self._stray, []
        for stream, data in stray:  # output background jobs wrote since the last command
            pending.feed(stream, data)
        return pending

    def submit(self, command: str, *, merge: bool, limit: int, deadline: float) -> _Pending:
        """Send ``command``; the returned pending command is completed by :meth:`pump`."""
        self._seq += 1
        seq = str(self._seq).encode()
        pending = self._new_pending(seq, merge=merge, limit=limit)
        quoted = _quote(command)
        if len(quoted) > INLINE_LIMIT:
            self._copy_in("cmd", _encode(command))
            load, source = b"__tg_c=", b'source "$__tg_d/cmd"'
        else:
            load, source = b"__tg_c=" + quoted, b'source /dev/fd/9 9<<<"$__tg_c"'
        # ``source``, not ``eval``: a DEBUG trap returning 2 unwinds a sourced
        # script (that is how a timed-out command's remaining list is skipped).
        # The leading newline resets bash's parser after a syntax error in the
        # previous line (bash 5.2 may then not see ``{`` as a reserved word).
        line = (
            b"\n{ " + load + b"; __tg_b " + seq + b"; } 2>/dev/null; "
            + source + (b" </dev/null; " if merge else b" </dev/null 2>&19; ")
            + b"{ __tg_e " + seq + b" $?" + (b"" if merge else b" 2") + b"; } 2>/dev/null\n"
        )
        self._send(line, deadline)
        return pending

    def _copy_in(self, name: str, data: bytes) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(f"{self.files_dir.lstrip('/')}/{name}")
            info.size = len(data)
            info.mode = 0o644  # readable by a non-root USER of the image
            tar.addfile(info, io.BytesIO(data))
        try:
            ok = self.api.put_archive(self.container_id, "/", buf.getvalue())
        except Exception as exc:  # noqa: BLE001
            raise CopyFailed(f"cannot copy a long command into the sandbox: {_describe(exc)}") from exc
        if not ok:
            raise CopyFailed("the engine refused to copy a long command into the sandbox")

    def _send(self, data: bytes, deadline: float) -> None:
        sock = self._sock
        if sock is None:
            raise ShellUnavailable("the shell's connection is closed")
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShellUnavailable("the shell stopped reading its input")
            try:
                _, writable, _ = select.select([], [sock], [], min(remaining, 1.0))
            except (OSError, ValueError) as exc:
                self.alive = False
                raise ShellUnavailable("the shell's connection is closed") from exc
            if not writable:
                continue
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                self.alive = False
                raise ShellUnavailable(f"the shell's connection broke: {exc}") from exc
            view = view[sent:]

    def pump(self, pending: _Pending, deadline: float, cancel: threading.Event | None = None) -> str:
        """Read until ``pending`` is complete: ``done``, ``eof`` (the shell is gone), ``deadline`` or ``cancelled``."""
        sock = self._sock
        if sock is None:
            return "eof"
        while not pending.done:
            if not self.alive:  # closed by another thread
                pending.finish()
                return "eof"
            if cancel is not None and cancel.is_set():
                return "cancelled"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "deadline"
            ssl_pending = getattr(sock, "pending", None)
            if not (ssl_pending and ssl_pending()):
                try:
                    readable, _, _ = select.select([sock], [], [], min(remaining, 0.25 if cancel is not None else 1.0))
                except (OSError, ValueError):  # closed under us (the sandbox is being closed)
                    readable = [sock]
                if not readable:
                    continue
            try:
                data = sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self.alive = False
                pending.finish()
                return "eof"
            for stream, payload in self._decoder.feed(data):
                pending.feed(stream, payload)
        pending.finish()
        self._stray.extend(pending.leftovers)
        return "done"

    def drain(self) -> bool:
        """Take in whatever arrived between commands (background output, EOF); ``False`` if the shell is gone."""
        sock = self._sock
        while sock is not None:
            try:
                readable, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                self.alive = False
                return False
            if not readable:
                return self.alive
            try:
                data = sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                return self.alive
            except OSError:
                data = b""
            if not data:
                self.alive = False
                return False
            self._stray.extend(self._decoder.feed(data))
            if sum(len(chunk) for _, chunk in self._stray) > 1 << 22:  # a chatty daemon: keep the newest 4 MiB
                self._stray = self._stray[len(self._stray) // 2 :]
        return False

    def take_output(self, timeout_s: float) -> str | None:
        """Everything written to the idle shell's output so far (a no-op command is the fence).

        Returns ``None`` if the shell did not answer. The output would otherwise lead
        the next command's; :meth:`give_back` returns what should still go there.
        """
        try:
            status, _, text = self.call("", timeout_s)
        except ShellUnavailable:
            return None
        return text if status == "done" else None

    def give_back(self, text: str) -> None:
        """Put ``text`` in front of the next command's output."""
        if text:
            self._stray.insert(0, (STDOUT, text.encode("utf-8", errors="replace")))

    def call(self, command: str, timeout_s: float) -> tuple[str, int | None, str]:
        """Run a short command (control shell use): ``(status, exit code, output)``."""
        deadline = time.monotonic() + timeout_s
        pending = self.submit(command, merge=True, limit=1 << 16, deadline=deadline)
        status = self.pump(pending, deadline)
        return status, pending.exit_code, pending.out.text()


def _describe(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "explanation", None) or exc).split()) or type(exc).__name__
    return text[:300]


class PersistentShell:
    """The user-facing shell of one sandbox: a main session, a control session, restarts."""

    def __init__(self, api: Any, container_id: str, workdir: str) -> None:
        self.api = api
        self.container_id = container_id
        self.workdir = workdir
        self.main: BashSession | None = None
        self.control: BashSession | None = None
        self._lock = threading.Lock()  # one command at a time, like a terminal
        self._control_start = threading.Lock()  # one control-shell start at a time
        self._state = threading.Lock()  # guards ``control`` and ``_closed``
        self._closed = False
        #: Times a fork failed at the pids limit (the cgroup's counter) when last looked at.
        self._limit_hits = 0
        self._control_thread: threading.Thread | None = None

    # -- sessions ------------------------------------------------------------------------

    def _start_main(self) -> None:
        if self._closed:
            raise ShellUnavailable("the sandbox is closed")
        session = BashSession(self.api, self.container_id, self.workdir, job_control=True, extra=_KILLER)
        session.start()
        self.main = session
        # The control shell must exist *before* trouble: once a fork bomb holds
        # every pid, no exec can start. A thread starts it while the first command
        # runs; :meth:`_check_process_limit` waits for it before the next one.
        if self.control is None or not self.control.alive:
            self._control_thread = threading.Thread(target=self._control, name="termigen-control-shell", daemon=True)
            self._control_thread.start()

    def _control(self) -> BashSession | None:
        """The idle control shell (started if needed); ``None`` when it cannot be had."""
        with self._control_start:
            with self._state:
                if self.control is not None and self.control.alive:
                    return self.control
                if self._closed:
                    return None
            session = BashSession(self.api, self.container_id, "/", job_control=False, extra=_KILLER)
            try:
                session.start()
            except ShellUnavailable as exc:
                log.debug("no control shell in %s: %s", self.container_id[:12], exc)
                return None
            with self._state:
                if self._closed:  # closed while it started: do not leave it behind
                    session.close()
                    return None
                self.control = session
            return session

    def _kill_command(self, main: BashSession, *, everything: bool = False) -> str:
        """Kill what the current command started (``everything``: all the shell started); returns a note."""
        call = f"__tg_kill {main.pid} {main.files_dir} {'- all' if everything else main.seq}"
        control = self._control()
        output = ""
        if control is not None:
            try:
                status, _, output = control.call(call, CONTROL_TIMEOUT_S)
            except ShellUnavailable:
                status = "eof"
            if status != "done":
                control.close()
                output = ""
        if not output:  # no control shell: a one-off exec (fails if no pid is left)
            try:
                exec_id = self.api.exec_create(self.container_id, ["bash", "-c", _KILLER + call])["Id"]
                output = self.api.exec_start(exec_id).decode(errors="replace")
            except Exception as exc:  # noqa: BLE001
                return f"could not kill the command's processes ({_describe(exc)})"
        parts, _ = _said(output)
        if len(parts) >= 3 and parts[2].isdigit():
            self._limit_hits = int(parts[2])
        if len(parts) >= 2 and parts[1] == "1" and not everything:
            return AT_LIMIT
        return ""

    def _check_process_limit(self, main: BashSession) -> str:
        """Before and after a command: if forks failed at the pids limit since the last look, clear the sandbox.

        A fork bomb started in the background returns at once; its copies then fill
        the pids cgroup and print ``fork: retry`` forever, which would lead every
        later output. Everything the shell started is killed (the shell stays),
        the failed-fork messages are dropped, and the note returned says so. Checked
        after the command too, since a bomb may still be growing when the next one starts.
        """
        starting = self._control_thread
        if starting is not None and starting.is_alive():
            starting.join(START_TIMEOUT_S)
        # The control shell, or (when a bomb went off before it could start) the idle main shell,
        # which carries the same builtins-only helpers.
        control = self.control if self.control is not None and self.control.alive else main
        try:
            status, _, output = control.call("{ __tg_pids; } 2>/dev/null", CONTROL_TIMEOUT_S)
        except ShellUnavailable:
            status, output = "eof", ""
        if status != "done":
            if control is not main:
                control.close()
            return ""
        parts, rest = _said(output)
        if control is main:  # the main shell's output since the command: it belongs to the next one
            main.give_back(rest)
        if len(parts) < 3 or not parts[0].isdigit() or int(parts[0]) <= self._limit_hits:
            return ""
        limit, self._limit_hits = parts[2], int(parts[0])
        if control is main:
            _, _, output = main.call(f"{{ __tg_kill $$ {main.files_dir} - all; }} 2>/dev/null", CONTROL_TIMEOUT_S)
            said, rest = _said(output)
            main.give_back(rest)
            if len(said) >= 3 and said[2].isdigit():
                self._limit_hits = int(said[2])
            failed = ""
        else:
            failed = self._kill_command(main, everything=True)
        self._drop_fork_messages(main)
        return (f"the sandbox reached its limit of {limit} processes, so every process started from the shell "
                "was killed (the shell itself was kept)" + (f"; {failed}" if failed else ""))

    def _drop_fork_messages(self, main: BashSession) -> None:
        """After killing a fork bomb: drop its failed-fork messages still on their way from the idle shell,
        and the job reports (``Done``, ``Killed``) bash would print for the killed jobs in front of a
        later command: the jobs are forgotten (``disown -a``; they are all dead) and that call's output dropped."""
        before = main.take_output(CONTROL_TIMEOUT_S)
        try:
            main.call("{ disown -a; } 2>/dev/null", CONTROL_TIMEOUT_S)
        except ShellUnavailable:
            pass
        if before is not None:
            main.give_back(_JOB_REPORT.sub("", _drop_fork_failures(before)))

    def _kill_shell(self, main: BashSession) -> None:
        control = self._control()
        command = f"kill -KILL {main.pid} 2>/dev/null"
        try:
            if control is not None:
                control.call(command, CONTROL_TIMEOUT_S)
            else:
                exec_id = self.api.exec_create(self.container_id, ["bash", "-c", command])["Id"]
                self.api.exec_start(exec_id)
        except Exception:  # noqa: BLE001 - the shell is abandoned either way
            pass
        main.close()

    def _restart(self, why: str) -> str:
        """Replace the main shell; returns the note telling the caller what was lost."""
        if self.main is not None:
            self.main.close()
        self.main = None
        reset = f"a new shell was started in {self.workdir} (working directory, variables, functions and aliases were reset)"
        try:
            self._start_main()
        except ShellUnavailable as exc:
            return f"{why}; starting a new shell failed: {exc}"
        return f"{why}; {reset}"

    # -- commands -------------------------------------------------------------------------

    def run(self, command: str, timeout_s: float, *, merge: bool = True, limit: int,
            cancel: threading.Event | None = None) -> CommandResult:
        with self._lock:
            return self._run(command, max(float(timeout_s), 0.001), merge, limit, cancel)

    def _run(self, command: str, timeout_s: float, merge: bool, limit: int, cancel: threading.Event | None) -> CommandResult:
        start = time.monotonic()
        notes: list[str] = []
        restarted = bomb = False

        def failed(message: str) -> CommandResult:
            text = "".join(f"[termigen: {note}]\n" for note in [*notes, message])
            return CommandResult(command, -1, text, time.monotonic() - start,
                                 shell_restarted=restarted, stderr=None if merge else "")

        if self._closed:
            return failed("the sandbox is closed")
        if cancel is not None and cancel.is_set():
            return failed("the run is stopping, so the command was not run")
        if self.main is not None and not self.main.drain():
            code = self.main.exit_code(wait_s=0.5)
            notes.append(self._restart(f"the shell had exited (exit code {code})"))
            restarted = True
        if self.main is None:
            try:
                self._start_main()
            except ShellUnavailable as exc:
                return failed(str(exc))
        main = self.main
        assert main is not None
        cleared = self._check_process_limit(main)
        if cleared:
            notes.append(cleared)
        deadline = start + timeout_s
        try:
            pending = main.submit(command, merge=merge, limit=limit, deadline=max(deadline, time.monotonic() + 5))
        except CopyFailed as exc:
            return failed(str(exc))
        except ShellUnavailable as exc:
            restarted = True
            notes.append(self._restart(f"the shell stopped answering ({exc})"))
            return failed("the command was not run")
        status = main.pump(pending, deadline, cancel)
        stopped = status in ("deadline", "cancelled")
        timed_out = status == "deadline"
        why = f"timed out after {timeout_s:g}s" if timed_out else "was interrupted (the run is stopping)"
        exit_code = pending.exit_code
        if stopped:
            note = self._kill_command(main)
            status = main.pump(pending, time.monotonic() + KILL_GRACE_S)
            exit_code = 137  # killed, whatever the rest of the shell's list returned
            if status == "done":
                notes.append(f"the command {why}; it was stopped and its processes were killed"
                             + (f"; {note}" if note else ""))
                if note == AT_LIMIT:  # a fork bomb: its failed-fork messages are noise
                    bomb = True
                    self._drop_fork_messages(main)
            elif status == "deadline":
                self._kill_shell(main)
                notes.append(self._restart(
                    f"the command {why} and the shell itself did not come back (it trapped the abort, "
                    "or was stuck in a builtin), so the shell was killed"))
                restarted = True
        if status == "eof" and self._closed:
            notes.append("the sandbox was closed while the command was running")
            exit_code, status = -1, "closed"
        if status == "eof":
            code = main.exit_code()
            if not stopped:
                exit_code = code if code is not None else -1
            lead = f"the command {why}, and while it was stopped " if stopped else ""
            notes.append(self._restart(f"{lead}the shell exited (exit code {code})"))
            restarted = True
        if exit_code is None:
            exit_code = -1
        output = as_terminal(pending.out.text())
        cleared = self._check_process_limit(main) if status == "done" else ""
        if cleared:
            notes.append(cleared)
        if cleared or bomb:
            output = _drop_fork_failures(output)
        if notes:
            output += ("" if not output or output.endswith("\n") else "\n") + "".join(
                f"[termigen: {note}]\n" for note in notes)
        truncated = pending.out.dropped + (pending.err.dropped if pending.err is not None else 0)
        return CommandResult(
            command=command,
            exit_code=exit_code,
            output=output,
            duration_s=time.monotonic() - start,
            timed_out=timed_out,
            truncated_bytes=truncated,
            shell_restarted=restarted,
            stderr=as_terminal(pending.err.text()) if pending.err is not None else None,
        )

    def close(self) -> None:
        """Drop both sessions (the container's removal ends their processes); never blocks on a command."""
        with self._state:
            self._closed = True
            sessions = (self.main, self.control)
        for session in sessions:
            if session is not None:
                session.close()


#: bash names the sourced wrapper in its own messages (``/dev/fd/9: line 1: tree: command not
#: found``); a terminal says ``bash: tree: command not found``. Observations become training data,
#: so the wrapper must not show.
_WRAPPER_PREFIX = re.compile(r"^(?:/dev/fd/9|/tmp/\.termigen-shell-[^/\s]+/cmd): line \d+: ", re.MULTILINE)


#: What bash (and the shells of a fork bomb) print while forks fail at the pids limit.
_FORK_FAILED = re.compile(r"\bfork: (?:retry: )?(?:Resource temporarily unavailable|Cannot allocate memory)")


def _said(output: str) -> tuple[list[str], str]:
    """The fields a helper printed after ``__tg:``, and the rest of ``output``."""
    fields: list[str] = []
    rest = []
    for line in output.splitlines(keepends=True):
        if line.startswith("__tg: "):
            fields = line.split()[1:]
        else:
            rest.append(line)
    return fields, "".join(rest)


#: bash's reports of finished jobs, e.g. ``bash: line 73:    23 Done    :`` and ``    24 Killed    | :``.
_JOB_REPORT = re.compile(r"^(?:bash: line \d+: )?\s*(?:\[\d+\][+-]?\s+)?\d+\s+(?:Done|Killed|Terminated|Exit \d+)(?:\s.*)?\n?", re.MULTILINE)


def _drop_fork_failures(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not _FORK_FAILED.search(line))


def as_terminal(text: str) -> str:
    """Output as an interactive terminal would show it (no wrapper names in bash's messages)."""
    return _WRAPPER_PREFIX.sub("bash: ", text)


"""Start and stop one fleet node in the background for the `terraform/local` module.

Terraform's local-exec waits for its command and every pipe the command holds, so a
node cannot simply be put in the background from a shell there. This helper starts
the node in its own session with its output going to a log file, records its PID,
and returns only once the node accepts connections (or fails, printing the log). On
destroy it stops exactly the PID it recorded: SIGTERM, then SIGKILL after a grace
period, and only if that PID still runs one of our commands.

Usage:
  node.py write-file PATH               (content: base64 in $NODE_FILE_B64, mode 0600)
  node.py start --pid-file F --log-file L [--wait HOST:PORT] [--env-file E] --argv JSON
  node.py stop PID_FILE
  node.py claim-dir DIR                 (create DIR and mark it as this module's)
  node.py release-dir DIR               (on destroy: remove DIR if this module made it)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 60.0
STOP_GRACE = 15.0
# A PID is ours only if its command line still carries one of these.
OUR_COMMANDS = ("cli.main", "demo.origin", "edgeshield")


def write_file(path: Path) -> int:
    """Write $NODE_FILE_B64 (decoded) to `path` atomically, readable by the owner only."""
    data = base64.b64decode(os.environ["NODE_FILE_B64"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
    return 0


#: the file that marks a state directory as made by this module (and so its to remove)
CLAIM_MARK = ".made-by-terraform-local"


def claim_dir(path: Path) -> int:
    """Create the state directory and mark it as ours, unless it already existed (a
    directory the operator made is never removed on destroy)."""
    if not path.exists():
        path.mkdir(parents=True)
        (path / CLAIM_MARK).write_text("removed by terraform destroy\n", encoding="ascii")
    return 0


def release_dir(path: Path) -> int:
    """Remove the state directory (caches, logs, the fleet file and the node secret)
    if `claim_dir` made it; otherwise leave it as it was found."""
    if (path / CLAIM_MARK).is_file():
        shutil.rmtree(path)
        print(f"removed {path}")
    return 0


def read_env_file(path: Path | None) -> dict[str, str]:
    """NAME=value lines of an env file (no quoting, no expansion)."""
    if path is None:
        return {}
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.startswith("#"):
            env[name.strip()] = value
    return env


def accepts(host: str, port: int) -> bool:
    """Whether something accepts a TCP connection on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(pid_file: Path, log_file: Path, wait: str, env_file: Path | None, argv: list[str]) -> int:
    """Start `argv` detached, record its PID, and wait until it listens on `wait`."""
    if pid_file.exists() and is_ours(read_pid(pid_file)):
        print(f"already running: PID {read_pid(pid_file)} from {pid_file}", file=sys.stderr)
        return 1
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **read_env_file(env_file), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n", encoding="ascii")
    if not wait:
        return 0
    host, _, port_text = wait.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"{argv} exited with status {proc.returncode} before listening on {wait}",
                  file=sys.stderr)
            print(log_tail(log_file), file=sys.stderr)
            pid_file.unlink(missing_ok=True)
            return 1
        if accepts(host, int(port_text)):
            print(f"started PID {proc.pid}, listening on {wait}, log {log_file}")
            return 0
        time.sleep(0.1)
    # A node that never came up is stopped here: Terraform does not run the destroy
    # provisioner of a resource whose creation failed.
    print(f"{argv} did not listen on {wait} within {START_TIMEOUT:.0f}s", file=sys.stderr)
    print(log_tail(log_file), file=sys.stderr)
    stop(pid_file)
    return 1


def read_pid(pid_file: Path) -> int:
    """The PID recorded in `pid_file`, or 0."""
    try:
        return int(pid_file.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


def is_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def is_ours(pid: int) -> bool:
    """Whether `pid` runs and still runs one of our commands (the PID was not reused)."""
    if not is_running(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(marker in text for marker in OUR_COMMANDS)


def stop(pid_file: Path) -> int:
    """Stop the process recorded in `pid_file`: SIGTERM, then SIGKILL after a grace."""
    pid = read_pid(pid_file)
    if is_ours(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_running(pid):
            print(f"PID {pid} ignored SIGTERM for {STOP_GRACE:.0f}s; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            while is_running(pid):
                time.sleep(0.05)
        print(f"stopped PID {pid}")
    pid_file.unlink(missing_ok=True)
    return 0


def main() -> int:
    """Parse the command line and run one action."""
    parser = argparse.ArgumentParser(description="start and stop fleet nodes for terraform/local")
    sub = parser.add_subparsers(dest="action", required=True)
    write = sub.add_parser("write-file")
    write.add_argument("path", type=Path)
    begin = sub.add_parser("start")
    begin.add_argument("--pid-file", type=Path, required=True)
    begin.add_argument("--log-file", type=Path, required=True)
    begin.add_argument("--wait", default="")
    begin.add_argument("--env-file", type=Path)
    begin.add_argument("--argv", required=True, help="the command, as a JSON list")
    end = sub.add_parser("stop")
    end.add_argument("pid_file", type=Path)
    for action in ("claim-dir", "release-dir"):
        sub.add_parser(action).add_argument("path", type=Path)
    args = parser.parse_args()
    if args.action == "write-file":
        return write_file(args.path)
    if args.action == "claim-dir":
        return claim_dir(args.path)
    if args.action == "release-dir":
        return release_dir(args.path)
    if args.action == "start":
        return start(args.pid_file, args.log_file, args.wait, args.env_file, json.loads(args.argv))
    return stop(args.pid_file)


if __name__ == "__main__":
    sys.exit(main())

"""Start one container of a process-node pod: mounts, read-only root, user, then exec the command.

Run by `tests/harness/process_node.py` inside a private mount namespace (`unshare --mount`), so the bind
mounts below — the ConfigMaps at /etc/mlcycle, the service-account token at its usual path, the claim at
/mnt/pvc/<claim>, an emptyDir over /tmp — are seen by this process tree only, at the paths the pod spec
names, exactly as the runtime finds them in a real pod.

    python -m tests.harness.pod_exec PLAN.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def mount(*args: str, pass_fds: tuple[int, ...] = ()) -> None:
    subprocess.run(["mount", *args], check=True, pass_fds=pass_fds)


def expose(path: str) -> None:
    """Make `path` reachable for any user: the interpreter may live under a private home (pyenv in /root).

    The closed ancestor is covered, in this namespace only, by a world-traversable tmpfs holding just `path`.
    """
    closed = next((a for a in reversed(Path(path).parents) if not os.stat(a).st_mode & 0o001), None)
    if closed is None:
        return
    stash = tempfile.mkdtemp(prefix="pod-exec-")
    mount("--bind", path, stash)
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(closed))
    os.makedirs(path, exist_ok=True)
    mount("--bind", stash, path)


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    if plan.get("uid") not in (None, 0):
        for path in plan.get("expose", []):
            expose(path)
    # Sources are held open first: a mount over /tmp would otherwise hide every source that lives under /tmp.
    # They are mounted through /proc/<pid>/fd/N without canonicalising, which would turn the fd back into a
    # path name that, by then, may resolve inside the new mount.
    sources = [os.open(m["source"], os.O_PATH) for m in plan["mounts"]]
    # So are the host paths the command needs (the checkout and its venv): a volume over /tmp must not hide a
    # checkout that lives there; they are bound back inside such a volume below.
    keep = {path: os.open(path, os.O_PATH) for path in plan.get("keep", []) if os.path.isdir(path)}
    for m, fd in zip(plan["mounts"], sources, strict=True):
        os.makedirs(m["target"], exist_ok=True)
        mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", m["target"], pass_fds=(fd,))
        if m.get("readOnly"):
            mount("-o", "remount,bind,ro", m["target"])
        os.close(fd)
    for path, fd in keep.items():
        if any(Path(path).is_relative_to(m["target"]) for m in plan["mounts"]):
            os.makedirs(path, exist_ok=True)
            mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", path, pass_fds=(fd,))
        os.close(fd)
    if plan.get("readOnlyRoot"):
        mount("-o", "remount,bind,ro", "/")
    uid, gid = plan.get("uid"), plan.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    os.chdir(plan.get("workingDir") or "/")
    argv = plan["argv"]
    env = plan["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        print(f"process-node: cannot start {argv[0]!r}: {err.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1])

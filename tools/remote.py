"""`dvc push` / `dvc pull` with failures reported as one line that says what to do, and a run-cache that works
across machines.

    python tools/remote.py push [--run-cache] [-r NAME]     # make push
    python tools/remote.py pull [--run-cache] [-r NAME]     # make pull

DVC's own messages for a remote that went away are accurate but scattered ("unexpected error - [Errno 111]
Connect call failed", a support banner, "N files failed to download"). This runs the same command and, when it
fails, prints the cause it recognises plus the fix, and whether the workspace is complete. After a pull it hashes
what was checked out and the cache objects of what it did not check out, and removes any file or object that
came down cut short (:func:`remove_cut_short`), so an interrupted pull leaves files missing, never half-written;
`dvc status` lists them and rerunning the pull fetches only what is missing.

With --run-cache, DVC moves only the run records (`.dvc/cache/runs`), not the outputs they point to: the
outputs of an experiment that is not checked out, and the `cache: false` metrics and plots of every run, which
DVC commits to the local cache for the run-cache but never pushes. A machine that pulls the records but not those
objects cannot restore a stage from the run-cache and recomputes it. So push/pull --run-cache here also moves
every object the local run records use (DVC's own StageCache.get_used_objs, what `dvc repro --pull` fetches one
stage at a time).
"""
import argparse
import json
import re
import subprocess
import sys

# (pattern in DVC's output, what it means, what to do); the first match wins
CAUSES = [
    (r"Connect call failed|Connection refused|Errno 111|Name or service not known|No route to host|timed out",
     "the remote's server cannot be reached", "check that the host is up and the port is right"),
    (r"Host key is not trusted|host key",
     "the server's host key is not in ~/.ssh/known_hosts", "add it: ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts"),
    (r"Permission denied for user|Authentication failed|No authentication methods",
     "the server refused the login", "check the user and key: dvc remote modify --local NAME keyfile PATH"),
    (r"No space left|disk quota|Failure.*[Qq]uota",
     "the remote's disk is full", "free space there, then rerun"),
    # OpenSSH's SFTP server answers ENOSPC and EROFS alike with the generic status "Failure"
    (r"(?m)- Failure$",
     "the server refused to store files (SFTP 'Failure': a full disk or a read-only folder on the remote)",
     "check free space and permissions there (ssh HOST df -h PATH), then rerun: finished files are kept"),
    # sshfs reports a failed mkdir on the remote (read-only disk, or a parent that is a file) this way
    (r"is not a directory",
     "the remote folder cannot be created or written (a read-only disk, or a path that is not a folder)",
     "check that the remote path is a writable folder on the server, then rerun"),
    (r"Permission denied|read-only|Read-only",
     "the remote folder is not writable", "fix its permissions, then rerun"),
    (r"Connection lost|Broken pipe|Connection reset|ConnectionResetError|EOF",
     "the connection dropped mid-transfer", "rerun: finished files are kept, only the rest is transferred"),
]


def explain(output: str) -> str:
    for pattern, cause, fix in CAUSES:
        if re.search(pattern, output):
            return f"{cause}; {fix}"
    errors = [ln[len("ERROR: "):] for ln in output.splitlines() if ln.startswith("ERROR: ")]
    return errors[-1] if errors else output.strip().splitlines()[-1] if output.strip() else "unknown error"


def remote_url(name: str | None) -> str:
    def dvc(*args):
        proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    name = name or dvc("remote", "default")
    return dvc("config", f"remote.{name}.url") or name or "the default remote"


def run_cache_objects(repo) -> set:
    """Every object that the run records in the local cache point to."""
    from pathlib import Path

    runs = Path(repo.cache.legacy.path) / "runs"
    entries = [(p.parent.name, p.name) for p in runs.glob("*/*/*") if p.is_file()]
    return {obj for objs in repo.stage_cache.get_used_objs(entries).values() for obj in objs}


def _out_files(repo):
    """(workspace path, md5) of every file of every cached output that dvc.lock names, and the .dir objects that
    are corrupt (their bytes do not hash to their name): a directory's file list is read from that object, so a
    corrupt one is reported instead of its files."""
    import os

    from dvc_data.hashfile.hash import file_md5  # DVC's own hash of a file: what dvc.lock names

    files, bad_dirs = [], []
    for out in repo.index.outs:
        if not out.use_cache or not out.hash_info or not out.hash_info.value:
            continue
        if out.hash_info.isdir:
            dir_obj = repo.cache.local.oid_to_path(out.hash_info.value)
            if os.path.isfile(dir_obj) and file_md5(dir_obj) != out.hash_info.value[: -len(".dir")]:
                bad_dirs.append(dir_obj)
                continue
            tree = out.get_obj()
            files += [] if tree is None else [(os.path.join(out.fs_path, *key), hi.value) for key, _, hi in tree]
        else:
            files.append((out.fs_path, out.hash_info.value))
    return files, bad_dirs


def remove_cut_short() -> list[str]:
    """After a pull: workspace outputs whose bytes do not hash to what dvc.lock names, removed with their cache
    objects, and the cache objects of outputs missing from the workspace that do not hash to their name, removed.

    Seen in tests/test_remote.py: an SSH server that goes away mid-pull can leave a file that came down short (an
    SFTP read ended by the dropped connection) filed in the cache under the whole file's hash, read-only, as DVC
    leaves what it fetched. DVC does not re-hash what it downloads (`verify` is off by default, and even on it
    checks only what the next pull downloads, not what is already in the cache) nor a read-only object it checks
    out, so a rerun trusts it: dvc#10498, dvc#9641. Hashing what was checked out finds such files; hashing the
    objects of what was not (a pull that failed before checking them out, as in a CI run) finds the rest; removing
    them makes the next pull fetch them again. A pull into a complete workspace hashes only what it checked out."""
    import os

    from dvc.repo import Repo
    from dvc_data.hashfile.hash import file_md5

    with Repo() as repo:
        files, bad_objs = _out_files(repo)
        bad = [(path, md5) for path, md5 in files if os.path.isfile(path) and file_md5(path) != md5]
        for path, md5 in files:
            obj = repo.cache.local.oid_to_path(md5)
            if not os.path.exists(path) and os.path.isfile(obj) and file_md5(obj) != md5:
                bad_objs.append(obj)
        for path, md5 in bad:
            os.unlink(path)
            obj = repo.cache.local.oid_to_path(md5)
            if os.path.isfile(obj) and file_md5(obj) != md5:
                os.unlink(obj)
        for obj in bad_objs:
            os.unlink(obj)
    return [os.path.relpath(path) for path, _ in bad]


def move_run_cache_objects(action: str, remote: str | None) -> int:
    from dvc.repo import Repo

    with Repo() as repo:
        if action == "push":
            return len(repo.cloud.push(run_cache_objects(repo), remote=remote).transferred)
        return len(repo.cloud.pull(run_cache_objects(repo), remote=remote).transferred)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=("push", "pull"))
    ap.add_argument("-r", "--remote")
    ap.add_argument("--run-cache", action="store_true")
    args = ap.parse_args()
    cmd = ["dvc", args.action] + (["-r", args.remote] if args.remote else []) + (["--run-cache"] if args.run_cache else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode == 0 and args.run_cache:
        try:
            moved = move_run_cache_objects(args.action, args.remote)
            output += f"\n{moved} objects of the run-cache's runs {'pushed' if args.action == 'push' else 'fetched'}"
        except Exception as e:  # noqa: BLE001 - reported as one line below, like DVC's own failures
            proc = subprocess.CompletedProcess(cmd, 1, output, f"ERROR: {type(e).__name__}: {e}")
            output += proc.stderr
    try:
        short = remove_cut_short() if args.action == "pull" else []
    except Exception as e:  # noqa: BLE001 - one line, like DVC's own failures
        print(f"error: checking the pulled files failed: {type(e).__name__}: {e}; rerun the pull", file=sys.stderr)
        return 1
    if proc.returncode == 0 and not short:
        print("\n".join(ln for ln in output.strip().splitlines()[-2:]) if output.strip() else f"dvc {args.action}: done")
        return 0
    where = remote_url(args.remote)
    if proc.returncode == 0:
        line = (f"error: dvc pull from {where}: {len(short)} files came down cut short ({', '.join(short[:3])}"
                f"{', ...' if len(short) > 3 else ''}; a dropped connection), removed with their cache objects; "
                "rerun the pull")
    else:
        line = f"error: dvc {args.action} {'to' if args.action == 'push' else 'from'} {where} failed: {explain(output)}"
        if short:
            line += f"; {len(short)} files came down cut short and were removed"
    if args.action == "pull":
        status = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
        missing = len(json.loads(status.stdout or "{}")) if status.returncode == 0 else None
        if missing:
            line += f" ({missing} stages still have missing outputs: the workspace is incomplete)"
    print(line, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

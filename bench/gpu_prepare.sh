#!/usr/bin/env bash
# Prepare, on a machine WITH access to PyPI, the folder that `bench/gpu_run.py` needs on a GPU machine
# that has no network at all (see bench/README.md, "GPU run").
#
#     bench/gpu_prepare.sh [DEST]          # DEST defaults to build/gpu-carry (git ignores build/)
#
# DEST/wheels/                  wheels of llasm's runtime dependencies, of `python -m llama_cpp.server` and of
#                               the `openai` client, for CPython $GPU_PY (default 3.12) on manylinux x86-64,
#                               except the large ones a CUDA image with PyTorch already has (numpy, onnxruntime)
# DEST/llama_cpp_python-src.tar.xz   llama-cpp-python's source (the version pyproject.toml pins), slimmed to
#                               what a CUDA/CPU build compiles (no vocab test models, docs, other GPU backends, .git):
#                               the GPU machine compiles it with CUDA for the card it finds
# DEST/requirements.txt        the requirement lines those wheels satisfy (pip keeps what the image already has)
# DEST/speech/                  the bench's spoken questions (espeak-ng here), so bench/latency.py needs no espeak-ng there
# DEST/MANIFEST.json            what is in it and how big
#
# LCP_SDIST=path/to/llama_cpp_python-X.tar.gz reuses a downloaded source distribution.
#
# Everything that travels (the repository's own files + DEST) must stay under the GPU machine's transfer limit
# ($GPU_CARRY_LIMIT_MIB, default 64): the script prints both sizes and exits 3 if DEST alone is over it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/build/gpu-carry}
PY=${GPU_PY:-3.12}
LIMIT_MIB=${GPU_CARRY_LIMIT_MIB:-64}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llasm-gpu-prepare.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

LCP_VERSION=$("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
print(re.search(r'"llama-cpp-python==([^"\]]+)"', text).group(1))
EOF
)
echo "== llama-cpp-python $LCP_VERSION, wheels for CPython $PY, into $DEST"

# --- 1. wheels ---------------------------------------------------------------------------------------------
# llasm's own dependencies (pyproject.toml) minus llama-cpp-python (built there) and what the image has,
# + llama-cpp-python's own + its [server] extra (bench/serve.py's comparison) + openai (bench/serve.py's client).
"$PYTHON" - "$ROOT/pyproject.toml" > "$WORK/requirements.txt" <<'EOF'
import re, sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = {"llama-cpp-python", "numpy", "onnxruntime"}  # built there / large and already in a CUDA+PyTorch image
for d in deps:
    name = re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].strip().lower()
    if name not in skip:
        print(d)
for d in ("typing-extensions>=4.5.0", "diskcache>=5.6.1", "jinja2>=2.11.3",  # llama-cpp-python's own
          "uvicorn>=0.22.0", "fastapi>=0.100.0", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
          "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1",  # llama-cpp-python[server]
          "openai>=1.50"):  # bench/serve.py
    print(d)
EOF
echo "-- requirements:"; sed 's/^/   /' "$WORK/requirements.txt"
cp "$WORK/requirements.txt" "$DEST/requirements.txt"  # what the GPU machine installs from wheels/ (pip --no-index)
rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels"
platforms=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
"$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$PY" \
    --implementation cp "${platforms[@]}" --platform any -d "$DEST/wheels" -r "$WORK/requirements.txt"
# numpy comes in as a dependency of several: the image's own (2.x) serves them all.
rm -f "$DEST"/wheels/numpy-*.whl

# --- 2. llama-cpp-python's source, slimmed ----------------------------------------------------------------
if [ -n "${LCP_SDIST:-}" ]; then  # an sdist already downloaded (it is 75 MB)
    cp "$LCP_SDIST" "$WORK/"
else
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "llama-cpp-python==$LCP_VERSION" -d "$WORK"
fi
tar -xzf "$WORK"/llama_cpp_python-"$LCP_VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$LCP_VERSION"
V="$SRC/vendor/llama.cpp"
rm -rf "$SRC"/{.git,.github,docker,docs,examples,tests,scripts}
rm -rf "$V"/{.git,.github,.devops,.gemini,.pi,models,docs,examples,tests,benches,pocs,app,media,ci,conversion,gguf-py,requirements,skills}
rm -f "$V"/convert_*.py "$V"/build-xcframework.sh
find "$V/scripts" -type f ! -name '*.cmake' -delete
for d in "$V"/tools/*/; do
    case "$(basename "$d")" in mtmd) ;; *) rm -rf "$d" ;; esac
done
for b in cann et hexagon hip musa opencl openvino sycl virtgpu vulkan webgpu zdnn zendnn metal; do
    rm -rf "$V/ggml/src/ggml-$b"
done
# The tools folder's own CMakeLists names the removed tools; it is only read when LLAMA_BUILD_TOOLS is on.
tar -C "$WORK" -cf - "llama_cpp_python-$LCP_VERSION" | xz -T0 -9 > "$DEST/llama_cpp_python-src.tar.xz"

# --- 3. the bench's spoken questions (espeak-ng) -----------------------------------------------------------
if command -v espeak-ng >/dev/null; then
    (cd "$ROOT" && "$PYTHON" - "$DEST/speech" <<'EOF'
import sys, tempfile
from pathlib import Path
from bench.latency import TARGETS, make_utterances
with tempfile.TemporaryDirectory() as tmp:
    make_utterances(tuple(TARGETS), Path(tmp), Path(sys.argv[1]))
EOF
    )
else
    echo "espeak-ng is not installed: no speech/ folder (bench/latency.py then needs espeak-ng on the GPU machine)"
fi

# --- 4. sizes ----------------------------------------------------------------------------------------------
"$PYTHON" - "$ROOT" "$DEST" "$LCP_VERSION" "$PY" "$LIMIT_MIB" <<'EOF'
import json, subprocess, sys
from pathlib import Path
root, dest, version, py, limit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
size = lambda ps: sum(p.stat().st_size for p in ps) / 2**20
tree = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                      capture_output=True, check=True).stdout.decode().split("\0")
repo = size([root / f for f in tree if f and (root / f).is_file()])
manifest = {"llama_cpp_python": version, "python": py,
            "wheels": sorted(p.name for p in (dest / "wheels").glob("*.whl")),
            "files_mib": {str(p.relative_to(dest)): round(p.stat().st_size / 2**20, 2) for p in files},
            "carry_mib": round(size(files), 2), "repository_mib": round(repo, 2), "limit_mib": limit}
(dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"== {dest}: {manifest['carry_mib']:.1f} MiB ({len(manifest['wheels'])} wheels, "
      f"source {manifest['files_mib'].get('llama_cpp_python-src.tar.xz', 0):.1f} MiB); the repository's own files "
      f"{repo:.1f} MiB; together {repo + manifest['carry_mib']:.1f} MiB against a {limit:g} MiB limit")
if manifest["carry_mib"] > limit:
    sys.exit(3)
if repo + manifest["carry_mib"] > limit:
    print("WARNING: the repository and this folder together are over the limit: they cannot travel together")
EOF

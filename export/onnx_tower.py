"""Write a ``stack-swiglu`` audio tower (Whisper encoder + adaptor) as an ONNX graph for ONNX Runtime.

    python -m llasm_export.onnx_tower CHECKPOINT_OR_TOWER_FOLDER OUT.onnx

The graph maps ``mel`` (1, n_mels, T) to ``embeddings`` (1, T / 2k, llm_dim), float32, for any
T that is a multiple of 2k up to 3000 (30 s): the unpadded and chunked input modes feed it the
real audio only, and a padded model its 3000-frame windows. The runtime's onnx backend
(llasm_cli/towers/onnx.py) runs it without PyTorch.

The file is exact: float32 weights and arithmetic, checked against the PyTorch module before it
is published (``write_onnx_tower`` refuses a graph that differs by more than ``tol``). Graph
optimisations are left to ONNX Runtime's session (fused LayerNorm/GELU/bias at load time):
onnxruntime.transformers' offline optimiser finds no attention to fuse in this graph and made
neither the session nor the file faster (measured on whisper-base, 2 threads), and a
dynamically quantized int8 copy was faster but 20-25% off in rms (bench/onnx_tower.py).

Exporting needs PyTorch (the legacy TorchScript exporter: the dynamo one wants onnxscript) and
the ``onnx`` package (the train extra); checking needs onnxruntime, a runtime dependency.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llasm_cli.errors import CheckpointError
from llasm_cli.files import atomic_path
from llasm_cli.model import AudioTower, encode_frames

OPSET = 17
INPUT, OUTPUT = "mel", "embeddings"
MAX_FRAMES = 3000  # Whisper's 30 s window: the longest mel the graph is checked for
EXTERNAL_DATA_BYTES = 1_500_000_000  # weights above this go to OUT.data beside the graph (protobuf stops at 2 GB)
HALF_MIN_ELEMENTS = 1024  # half_weights: matrices only; norms and biases stay float32
TOLERANCE = 1e-4  # max |ORT - torch|, relative to max(1, max |torch|)
CHECK_TOKENS = (3, 50)  # embeddings per checked mel: a short chunk and 50 stacks (T = 100 k frames)


@dataclass
class OnnxReport:
    """What the check measured before the file was published."""

    path: Path
    bytes: int
    max_error: float  # max |ORT - torch| / max(1, max |torch|) over the checked lengths
    frames_checked: tuple[int, ...]
    external_data: str | None  # the weights' file beside the graph, for towers over ~1.5 GB


class _Graph(torch.nn.Module):
    """The exported function: mel -> Whisper encoder frames -> adaptor (and the frames, if asked)."""

    def __init__(self, tower: AudioTower, frames: bool) -> None:
        super().__init__()
        self.tower = tower
        self.frames = frames

    def forward(self, mel: torch.Tensor):  # (1, n_mels, T) -> (1, T / 2k, llm_dim) [, (1, T / 2, d)]
        frames = encode_frames(self.tower.encoder, mel)
        emb = self.tower.adapt(frames)
        return (emb, frames) if self.frames else emb


def export_graph(tower: AudioTower, path: Path, frames: bool = False) -> None:
    """torch.onnx.export with a dynamic time axis (traced at T = 100 k frames, any multiple of 2k runs).

    ``frames=True`` adds the encoder's output as a second output, ``frames`` (1, T / 2, d), for
    checks that read Whisper's own frames (bench/onnx_tower.py); the runtime's file has none.
    """
    k = tower.cfg.stack_factor
    example = torch.zeros(1, tower.n_mels, 2 * k * min(50, MAX_FRAMES // (2 * k)))
    outputs, axes = [OUTPUT], {INPUT: {2: "mel_frames"}, OUTPUT: {1: "tokens"}}
    if frames:
        outputs.append("frames")
        axes["frames"] = {1: "encoder_frames"}
    export_module(_Graph(tower, frames), (example,), path, [INPUT], outputs, axes)


def export_module(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                  axes: dict) -> None:
    """``module`` traced into the ONNX file ``path`` (the legacy exporter, opset ``OPSET``), quietly: the tower's
    graph here, Whisper's encoder and decoder graphs in whisper_onnx.py."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints, and the legacy exporter's deprecation
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes)


def check_session(path: Path):
    """An ONNX Runtime session on the CPU for checking a written graph against PyTorch (errors only in the log)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def write_onnx_tower(
    tower: AudioTower, path: str | Path, tol: float = TOLERANCE, external_data_bytes: int = EXTERNAL_DATA_BYTES,
    seed: int = 0, half_weights: bool = False,
) -> OnnxReport:
    """Export ``tower`` to ``path``, check it in ONNX Runtime against PyTorch, then publish it atomically.

    Towers whose weights exceed ``external_data_bytes`` keep them in ``<path>.data`` beside the
    graph (ONNX Runtime finds it there); it is published before the graph that names it.

    ``half_weights`` stores the weight matrices in float16 (half the file: what lets a packaged
    model fit a wheel) and computes in float32 all the same: ONNX Runtime folds the casts once at
    load. The check then compares against the module with its weights rounded the same way.
    """
    import onnx

    if tower.cfg.type != "stack-swiglu":
        raise CheckpointError(f"adaptor {tower.cfg.type!r} has no ONNX export; it runs on the torch backend only")
    path = Path(path)
    if half_weights or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in tower.parameters()):
        tower = copy.deepcopy(tower).float().cpu()  # the caller's module keeps its dtype and device
    if half_weights:
        with torch.no_grad():
            for p in tower.parameters():
                if p.numel() >= HALF_MIN_ELEMENTS:
                    p.copy_(p.half().float())
    tower.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.tmp-", dir=path.parent) as tmp:
        raw, staged = Path(tmp) / "raw.onnx", Path(tmp) / path.name
        export_graph(tower, raw)
        model = onnx.load(str(raw))  # pulls in any external data the exporter wrote
        if half_weights:
            store_half(model)
        weights = sum(t.ByteSize() for t in model.graph.initializer)
        data_name = f"{path.name}.data" if weights > external_data_bytes else None
        if data_name:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(staged))
        del model
        error, frames = check_onnx_tower(tower, staged, tol, seed)
        if data_name:
            with atomic_path(path.with_name(data_name)) as out:
                os.replace(Path(tmp) / data_name, out)
        with atomic_path(path) as out:
            os.replace(staged, out)
    size = path.stat().st_size + (path.with_name(data_name).stat().st_size if data_name else 0)
    return OnnxReport(path, size, error, frames, data_name)


def store_half(model) -> None:
    """Float32 initializers of at least HALF_MIN_ELEMENTS become float16 + a Cast back to float32."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    keep, casts = [], []
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= HALF_MIN_ELEMENTS:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}.f16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=f"{init.name}.cast"))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)


def check_onnx_tower(tower: AudioTower, path: Path, tol: float = TOLERANCE, seed: int = 0) -> tuple[float, tuple[int, ...]]:
    """Run the ONNX file and the module on random mels of a few lengths; raise if they differ.

    Returns the largest error (relative to max(1, max |torch|)) and the mel lengths checked.
    """
    session = check_session(path)
    k, rng = tower.cfg.stack_factor, np.random.default_rng(seed)
    lengths = tuple(dict.fromkeys(min(2 * k * n, MAX_FRAMES) for n in CHECK_TOKENS))
    worst = 0.0
    for frames in lengths:
        mel = (rng.standard_normal((1, tower.n_mels, frames)) * 0.5).astype(np.float32)  # log-mel's range
        with torch.inference_mode():
            ref = tower(torch.from_numpy(mel)).numpy()
        got = session.run([OUTPUT], {INPUT: mel})[0]
        if got.shape != ref.shape:
            raise CheckpointError(f"the ONNX tower made {got.shape} from {frames} mel frames; PyTorch {ref.shape}")
        error = float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))
        if not error <= tol:  # NaN fails too
            raise CheckpointError(f"the ONNX tower differs from PyTorch by {error:.2e} on {frames} mel frames "
                                  f"(at most {tol:.0e} allowed)")
        worst = max(worst, error)
    return worst, lengths


def main() -> None:
    from llasm_cli.model import load_tower

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tower", type=Path, help="a checkpoint folder, or a bundle's tower-torch folder")
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    args = parser.parse_args()
    report = write_onnx_tower(load_tower(args.tower), args.out)
    print(f"{report.path}: {report.bytes / 1e6:.1f} MB, max error {report.max_error:.1e} "
          f"on {', '.join(map(str, report.frames_checked))} mel frames")


if __name__ == "__main__":
    main()

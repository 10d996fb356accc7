"""The CPU graph (backbone, pyramid, proposal head) quantized to int8 by ONNX Runtime: how much
faster it runs, and how far its outputs move from float32's.

The graph of the weight set that serves ``--scene``'s tiles is exported as ``geoseg run``
exports it (:func:`geoseg.model.onnx_backbone.exported_graph`), calibrated on tiles of the
``--calibrate`` scenes read as the run reads them, and quantized statically (QDQ, per-channel
int8 weights, uint8 activations). Printed: for each group of outputs (pyramid levels, proposal
objectness, box deltas) the mean absolute difference to float32 over the mean magnitude, and
the CPU seconds per tile of each graph (one thread, best of ``--rounds``). ``--debug`` adds
each tensor's signal-to-quantization-noise ratio (dB) as ONNX Runtime's ``qdq_loss_debug``
measures it, the worst first.

    python benchmarks/int8_graph.py --scene ../shared/data/buildings-oam/nairobi_1_z19.tif \\
        --calibrate ../shared/data/buildings-oam/{dar_es_salaam_1,kampala_1,kathmandu_1}_z19.tif

(Not used by ``geoseg run``: see benchmarks/README.md, session 42, for why.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_tile_time import tiles_as_run_reads_them

from geoseg.model.onnx_backbone import cpu_session, exported_graph
from geoseg.model.protocol import load_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--scene", required=True, help="tiles to compare and time on")
    parser.add_argument("--calibrate", nargs="+", required=True, help="scenes to calibrate on")
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--calibration-tiles", type=int, default=8, help="per scene")
    parser.add_argument("--method", choices=["minmax", "percentile"], default="minmax")
    parser.add_argument("--percentile", type=float, default=99.999)
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    plan, tiles = tiles_as_run_reads_them(args.scene, args.model, args.tiles)
    segmenter = load_segmenter(args.model, device="cpu")
    network = segmenter._network_at(plan.scene.gsd_m).network
    pixels = _graph_input(network, tiles)
    calibration = [
        _graph_input(network, tiles_as_run_reads_them(s, args.model, args.calibration_tiles)[1])
        for s in args.calibrate
    ]
    with tempfile.TemporaryDirectory() as folder:
        names, graph = exported_graph(network.backbone, network.rpn.head)
        float_path, int8_path = Path(folder, "float32.onnx"), Path(folder, "int8.onnx")
        float_path.write_bytes(graph)
        _quantize(float_path, int8_path, calibration, args)
        sessions = {"float32": cpu_session(graph, 1), "int8": cpu_session(str(int8_path), 1)}
        outputs = {k: s.run(None, {"pixels": pixels}) for k, s in sessions.items()}  # type: ignore[attr-defined]
        n = len(names)
        groups = {"pyramid": range(n), "objectness": range(n, 2 * n), "deltas": range(2 * n, 3 * n)}
        print(f"{len(pixels)} tiles of {args.scene}; calibrated on {len(calibration)} scenes")
        for group, indexes in groups.items():
            errors = [_relative_error(outputs["float32"][i], outputs["int8"][i]) for i in indexes]
            shown = " ".join(f"{e:.3f}" for e in errors)
            print(f"  {group:10s} relative error per level: {shown}")
        for name, session in sessions.items():
            print(f"  {name:8s} {_seconds_per_tile(session, pixels, args.rounds):.3f} s/tile")
        if args.debug:
            _debug(float_path, int8_path, pixels, Path(folder))


def _graph_input(network: torch.nn.Module, tiles: np.ndarray) -> np.ndarray:
    """What the graph is given: the tiles as the network's transform normalizes them."""
    with torch.no_grad():
        images, _ = network.transform(list(torch.from_numpy(tiles[:, :3]).float()))
    return images.tensors.contiguous().numpy()


def _quantize(source: Path, out: Path, calibration: list[np.ndarray], args) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    singles = [batch[i : i + 1] for batch in calibration for i in range(len(batch))]

    class Reader:
        def __init__(self) -> None:
            self.left = iter(singles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {"pixels": batch}

    percentile = args.method == "percentile"
    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=args.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
        extra_options={"CalibPercentile": args.percentile} if percentile else {},
    )


def _relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(reference - other).mean() / (np.abs(reference).mean() + 1e-12))


def _seconds_per_tile(session: object, pixels: np.ndarray, rounds: int) -> float:
    session.run(None, {"pixels": pixels})  # type: ignore[attr-defined]
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        session.run(None, {"pixels": pixels})  # type: ignore[attr-defined]
        best = min(best, time.process_time() - start)
    return best / len(pixels)


def _debug(float_path: Path, int8_path: Path, pixels: np.ndarray, folder: Path) -> None:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    inputs = [{"pixels": pixels[:1]}]
    paths = {}
    for name, path in (("float32", float_path), ("int8", int8_path)):
        paths[name] = folder / f"{name}_debug.onnx"
        modify_model_output_intermediate_tensors(str(path), str(paths[name]))
    matching = create_activation_matching(
        collect_activations(str(paths["int8"]), inputs),
        collect_activations(str(paths["float32"]), inputs),
    )
    errors = compute_activation_error(matching)
    print("  tensor: SQNR of its own quantization / of the int8 graph against float32 (dB)")
    for name, error in sorted(errors.items(), key=lambda item: item[1]["qdq_err"]):
        print(f"  {name[:72]:72s} {error['qdq_err']:6.1f} {error.get('xmodel_err', np.nan):6.1f}")


if __name__ == "__main__":
    main()

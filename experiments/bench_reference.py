"""Time the published Monodepth2 reference's training step on this machine, beside md2bench's.

Issue 9 asks for md2bench's step to be measured against the reference implementation on the same machine.
The reference's code is not part of md2bench (its licence is non-commercial and we do not copy it); this
script imports it from a checkout you point it at and drives the reference's own ``Trainer.process_batch``
(networks, pose prediction, ``generate_images_pred``, ``compute_losses``), then ``backward`` and Adam, on a
random in-memory batch, exactly as ``md2bench bench --parts train`` times md2bench's step.

Getting the reference (either works; REF is any directory outside this repository):

    git clone https://github.com/nianticlabs/monodepth2 REF
    # or, without git: the PyPI packaging of the same files
    pip download monodepth2==1.0.0 --no-deps -d . && unzip -q monodepth2-1.0.0-py3-none-any.whl -d REF

Then:

    python experiments/bench_reference.py --reference-dir REF --height 96 --width 320 --batch-size 8

The last line printed is one JSON object with ``reference_images_per_s``, ``md2bench_images_per_s`` and
``speedup`` (the median over rounds of reference / md2bench median step time). Each side runs in its own
process (so each keeps its own allocator settings: md2bench's ``train.keep_freed_memory`` is not given to the
reference unless ``--reference-keep-freed-memory``), alternating for ``--rounds`` rounds, so a machine that
drifts in speed slows both alike. Monocular, default flags (frames 0 -1 1, 4 scales, full-res multi-scale,
min reprojection, auto-masking, separate ResNet-18 pose net), from scratch on both sides; the reference in
fp32, md2bench as its config says (fp32 unless ``--md2bench-overrides train.cpu_amp=true``).

What is patched: on a machine without CUDA, ``Tensor.cuda`` becomes a no-op (the reference moves the
auto-masking tie-break noise with ``.cuda()`` and cannot run on a CPU otherwise). What is stubbed: modules
the reference imports but the step never calls (``tensorboardX``, ``IPython``, its ``datasets`` package,
which needs scikit-image) are replaced by empty modules when they are missing.
``Trainer.__init__`` is not run (it opens the KITTI file lists); the attributes the step uses are set here
with the reference's own classes, in the order its ``__init__`` builds them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types


def _stub_missing(name: str, **attrs) -> None:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        module = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(module, key, value)
        sys.modules[name] = module


def load_reference(reference_dir: str):
    """Import the reference's ``trainer``, ``options``, ``layers`` and ``networks`` from ``reference_dir``."""
    if not os.path.isfile(os.path.join(reference_dir, "trainer.py")):
        raise SystemExit(f"{reference_dir!r} has no trainer.py: point --reference-dir at a monodepth2 checkout "
                         "(see the module docstring for how to get one)")
    sys.path.insert(0, os.path.abspath(reference_dir))
    _stub_missing("tensorboardX", SummaryWriter=object)
    _stub_missing("IPython", embed=lambda *a, **k: None)
    _stub_missing("datasets", KITTIRAWDataset=None, KITTIOdomDataset=None)
    import torch

    if not torch.cuda.is_available():
        # The reference calls ``.cuda()`` on the auto-masking tie-break noise (``compute_losses``), so it cannot
        # run on a CPU as published; on a machine without CUDA that one call is made a no-op.
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    import layers  # noqa: E402  (from the reference checkout)
    import networks  # noqa: E402
    import options  # noqa: E402
    import trainer  # noqa: E402

    return trainer, options, layers, networks


def build_reference_trainer(ref, height: int, width: int, batch_size: int):
    """A reference ``Trainer`` with the attributes its training step reads, built by its own classes."""
    import torch

    trainer, options, layers, networks = ref
    argv = sys.argv
    sys.argv = ["train.py", "--height", str(height), "--width", str(width), "--batch_size", str(batch_size),
                "--no_cuda", "--weights_init", "scratch"]
    try:
        opt = options.MonodepthOptions().parse()
    finally:
        sys.argv = argv
    t = object.__new__(trainer.Trainer)
    t.opt = opt
    t.device = torch.device("cpu")
    t.num_scales = len(opt.scales)
    t.num_input_frames = len(opt.frame_ids)
    t.num_pose_frames = 2 if opt.pose_model_input == "pairs" else t.num_input_frames
    t.use_pose_net = True
    t.models = {
        "encoder": networks.ResnetEncoder(opt.num_layers, False),
    }
    t.models["depth"] = networks.DepthDecoder(t.models["encoder"].num_ch_enc, opt.scales)
    t.models["pose_encoder"] = networks.ResnetEncoder(opt.num_layers, False, num_input_images=t.num_pose_frames)
    t.models["pose"] = networks.PoseDecoder(t.models["pose_encoder"].num_ch_enc, num_input_features=1,
                                            num_frames_to_predict_for=2)
    t.parameters_to_train = [p for m in t.models.values() for p in m.parameters()]
    t.model_optimizer = torch.optim.Adam(t.parameters_to_train, opt.learning_rate)
    t.ssim = layers.SSIM()
    t.backproject_depth, t.project_3d = {}, {}
    for scale in opt.scales:
        h, w = height // 2**scale, width // 2**scale
        t.backproject_depth[scale] = layers.BackprojectDepth(batch_size, h, w)
        t.project_3d[scale] = layers.Project3D(batch_size, h, w)
    for m in t.models.values():
        m.train()
    return t


def reference_inputs(height: int, width: int, batch_size: int, seed: int = 0) -> dict:
    """The reference's input dictionary (colour and jittered colour per frame and scale, K and inv_K)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for frame in (0, -1, 1):
        full = torch.rand(batch_size, 3, height, width, generator=g)
        for scale in range(4):
            img = full if scale == 0 else torch.nn.functional.avg_pool2d(full, 2**scale)
            inputs[("color", frame, scale)] = img
            inputs[("color_aug", frame, scale)] = img.clone()
    for scale in range(4):
        w, h = width // 2**scale, height // 2**scale
        K = torch.tensor([[0.58 * w, 0, 0.5 * w, 0], [0, 1.92 * h, 0.5 * h, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        inputs[("K", scale)] = K.expand(batch_size, 4, 4).clone()
        inputs[("inv_K", scale)] = torch.linalg.inv(K).expand(batch_size, 4, 4).clone()
    return inputs


def _time_side(args: argparse.Namespace) -> list[float]:
    """Build one side (reference or md2bench) in this process and time ``args.steps`` steps after warm-up."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "reference":
        ref = load_reference(args.reference_dir)
        if args.reference_keep_freed_memory:
            from md2bench.runtime import keep_freed_memory

            keep_freed_memory()
        torch.manual_seed(0)
        t = build_reference_trainer(ref, args.height, args.width, args.batch_size)
        ref_inputs = reference_inputs(args.height, args.width, args.batch_size)

        def step() -> None:
            inputs = dict(ref_inputs)  # process_batch moves entries in place; keep ours intact
            _, losses = t.process_batch(inputs)
            t.model_optimizer.zero_grad()
            losses["loss"].backward()
            t.model_optimizer.step()
    else:
        from md2bench.bench import make_train_step

        step = make_train_step(_md2bench_config(args))
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _md2bench_config(args: argparse.Namespace):
    from md2bench.config import load_config

    return load_config(args.md2bench_config, [
        f"data.height={args.height}", f"data.width={args.width}", f"train.batch_size={args.batch_size}",
        "train.device=cpu", "model.pretrained=scratch", *args.md2bench_overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", required=True, help="a monodepth2 checkout (has trainer.py)")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating (reference, md2bench) process pairs")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--md2bench-config", default="synth", help="md2bench preset/TOML for its side")
    parser.add_argument("--md2bench-overrides", nargs="*", default=[],
                        help="extra KEY=VALUE for md2bench's side (e.g. train.cpu_amp=true)")
    parser.add_argument("--reference-keep-freed-memory", action="store_true",
                        help="give the reference md2bench's allocator setting too (isolates the step's own gains)")
    parser.add_argument("--side", choices=["reference", "md2bench"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # child: time one side, print its step times
        print(json.dumps(_time_side(args)))
        return

    import subprocess

    import torch

    child = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    ref_times: list[float] = []
    md_times: list[float] = []
    ratios = []
    for round_ in range(args.rounds):
        got = {}
        for side in ("reference", "md2bench"):
            out = subprocess.run([*child, "--side", side], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {side} side failed:\n{out.stderr[-3000:]}")
            got[side] = json.loads(out.stdout.strip().splitlines()[-1])
        ref_times += got["reference"]
        md_times += got["md2bench"]
        ratios.append(statistics.median(got["reference"]) / statistics.median(got["md2bench"]))
        print(f"round {round_ + 1}: reference {statistics.median(got['reference']):.2f} s/step, md2bench "
              f"{statistics.median(got['md2bench']):.2f} s/step, ratio {ratios[-1]:.2f}", flush=True)
    ref_ips = args.batch_size / statistics.median(ref_times)
    md_ips = args.batch_size / statistics.median(md_times)
    speedup = statistics.median(ratios)
    print(f"reference step: {ref_ips:.2f} images/s   md2bench step: {md_ips:.2f} images/s   "
          f"speed-up {speedup:.2f}x (median over rounds)  ({args.width}x{args.height}, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    print(json.dumps({
        "reference_images_per_s": ref_ips, "md2bench_images_per_s": md_ips, "speedup": speedup,
        "round_ratios": ratios, "reference_step_s": ref_times, "md2bench_step_s": md_times,
        "height": args.height, "width": args.width, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "reference_keep_freed_memory": args.reference_keep_freed_memory,
        "md2bench_config": _md2bench_config(args).flat(),
    }))


if __name__ == "__main__":
    main()

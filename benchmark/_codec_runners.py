"""One video through one API: the unit of work every strategy of
``benchmark_codec_apis.py`` repeats. Importable by pool processes.

Every API does the same work and returns the same thing: the ``T`` frames at
the frame indices cps_ray chose (``Plan.frame_indices``), as uint8
``[T, 3, S, S]`` after the resize policy (short side to ``S``, then the
center ``S x S`` crop); ``patch_stream`` goes on to select patches.

- ``decode_only`` / ``patch_stream``: cps_ray, decoder-side resize (swscale,
  bilinear), finding the frame indices itself (``uniform_strategy="auto"``).
  ``decode_only[index]`` and ``decode_only[keyframe]`` name the strategy;
  ``keyframe`` decodes the cheapest frames near the uniform ones, so its
  frames differ from the others' (within half a sampling interval).
- ``decord``: ``VideoReader(path, width=, height=)`` decodes straight to the
  short-side-resized size (decoder-side swscale, like cps_ray), then the
  center crop and HWC -> CHW in torch. With ``decord_resize="torch"`` it
  decodes at the native size and resizes like the naive baseline.
  It is handed the frame indices and the native size (a best case).
- ``torchcodec``: the naive baseline: default ``VideoDecoder`` (exact seek
  mode, which scans the file), ``get_frames_at``, then a torch bilinear
  antialiased resize and the center crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

APIS = ("decode_only", "decode_only[index]", "decode_only[keyframe]", "patch_stream", "decord",
        "torchcodec")  # fmt: skip
DECODE_APIS = ("decode_only", "decode_only[index]", "decode_only[keyframe]", "decord",
               "torchcodec")  # no process stage  # fmt: skip


def uniform_strategy(api: str) -> str:
    """``decode_only[keyframe]`` -> ``keyframe``; ``auto`` without brackets."""
    return api.split("[", 1)[1].rstrip("]") if "[" in api else "auto"


def decoded_per_frame(path: str, plan: Plan, sequence_length: int) -> dict[str, float]:
    """Packets each API decodes per sampled frame, from the packet index:
    cps_ray's plans (non-reference pictures skipped, groups without a frame
    left out), and decoding every packet from the keyframe before each frame
    onwards, as decord and torchcodec do (continuing without a seek when the
    next frame is in the same group)."""
    import numpy as np

    from cps_ray._decode.packets import frame_positions, packets_to_decode, read_index

    index = read_index(path)
    out = {}
    for api in ("decode_only", "decode_only[keyframe]"):
        positions = frame_positions(index, uniform_strategy(api), sequence_length)
        out[api] = int(packets_to_decode(index, positions).sum()) / sequence_length
    out["decode_only[index]"] = out["decode_only"]
    every = np.zeros(len(index.packet_pts), dtype=bool)
    for p in np.unique(np.asarray(plan.frame_indices)):
        every[int(index.start[p]) : int(index.packet[p]) + 1] = True
    out["decord"] = out["torchcodec"] = int(every.sum()) / sequence_length
    return {k: round(v, 2) for k, v in out.items()}


@dataclass(frozen=True)
class Plan:
    """What one video needs, found once before timing."""

    path: str
    frame_indices: tuple[int, ...]
    height: int  # native display size
    width: int
    num_frames: int


@dataclass(frozen=True)
class Job:
    """How to run one API on a video."""

    api: str
    decode_backend: str = "cpu"
    process_backend: str | None = None
    ffmpeg_threads: int = 1
    sequence_length: int = 16
    input_size: int = 224
    patch_size: int = 14
    k_keep: int = 2048
    output_dtype: str = "bf16"
    decord_resize: str = "decoder"  # or "torch"

    def with_threads(self, threads: int) -> Job:
        return replace(self, ffmpeg_threads=threads)


def make_plan(path: str, sequence_length: int, input_size: int) -> Plan:
    """The frame indices cps_ray decodes (so every API decodes the same frames)."""
    from torchcodec.decoders import VideoDecoder

    from cps_ray import DecodeConfig, decode_only

    out = decode_only(
        DecodeConfig(
            video_path=path,
            sequence_length=sequence_length,
            input_size=input_size,
            decode_backend="cpu",
        )
    )
    md = VideoDecoder(path, seek_mode="approximate").metadata
    return Plan(
        path=path,
        frame_indices=tuple(int(i) for i in out.frame_indices.tolist()),
        height=int(md.height),
        width=int(md.width),
        num_frames=int(out.num_frames),
    )


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[..., H, W]`` -> ``[..., size, size]``, the centered square."""
    h, w = frames.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[..., top : top + size, left : left + size]


def torch_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` -> uint8 ``[T, 3, size, size]``: short side to
    ``size`` (bilinear, antialiased), then the center crop."""
    from cps_ray._decode import resized_dims

    h, w = frames.shape[-2:]
    out = torch.nn.functional.interpolate(
        frames.float(),
        size=resized_dims(int(h), int(w), size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return center_crop(out.round_().clamp_(0, 255).to(torch.uint8), size).contiguous()


def _decode_only(job: Job, plan: Plan):
    from cps_ray import DecodeConfig, decode_only

    cfg = DecodeConfig(
        video_path=plan.path,
        sequence_length=job.sequence_length,
        input_size=job.input_size,
        decode_backend=job.decode_backend,
        uniform_strategy=uniform_strategy(job.api),
        ffmpeg_threads=job.ffmpeg_threads,
    )
    return decode_only(cfg).frames


def patch_config(job: Job, path: str | None):
    from cps_ray import PatchStreamConfig

    return PatchStreamConfig(
        video_path=path,
        sequence_length=job.sequence_length,
        input_size=job.input_size,
        decode_backend=job.decode_backend,
        process_backend=job.process_backend or "cpu",
        uniform_strategy="auto",
        ffmpeg_threads=job.ffmpeg_threads,
        patch_size=job.patch_size,
        k_keep=job.k_keep,
        output_dtype=job.output_dtype,
    )


def _patch_stream(job: Job, plan: Plan):
    from cps_ray import patch_stream

    with patch_stream(patch_config(job, plan.path)) as session:
        fields, scores = session.metadata_tensors
        return session.patches, fields, scores


def _open_decord(path: str, **kwargs):
    import decord

    try:
        return decord.VideoReader(path, **kwargs)
    except decord.DECORDError as err:
        if "st_nb >= 0" in str(err):  # av_find_best_stream found no decodable stream
            raise RuntimeError(
                "decord cannot decode this video stream (its bundled FFmpeg 4.1 has no "
                "decoder for this codec, e.g. AV1)"
            ) from None
        raise


def _decord(job: Job, plan: Plan):
    import decord

    from cps_ray._decode import resized_dims

    ctx = decord.cpu(0) if job.decode_backend == "cpu" else decord.gpu(0)
    size = job.input_size
    indices = list(plan.frame_indices)
    if job.decord_resize == "decoder":
        rh, rw = resized_dims(plan.height, plan.width, size)
        reader = _open_decord(
            plan.path, ctx=ctx, width=rw, height=rh, num_threads=job.ffmpeg_threads
        )
        hwc = torch.from_numpy(reader.get_batch(indices).asnumpy())  # [T, H, W, 3]
        chw = hwc.permute(0, 3, 1, 2)
        return center_crop(chw, size).contiguous()
    reader = _open_decord(plan.path, ctx=ctx, num_threads=job.ffmpeg_threads)
    hwc = torch.from_numpy(reader.get_batch(indices).asnumpy())
    return torch_resize(hwc.permute(0, 3, 1, 2), size)


def _torchcodec(job: Job, plan: Plan):
    from torchcodec.decoders import VideoDecoder

    device = "cpu" if job.decode_backend == "cpu" else "cuda"
    decoder = VideoDecoder(plan.path, num_ffmpeg_threads=job.ffmpeg_threads, device=device)
    frames = decoder.get_frames_at(list(plan.frame_indices)).data  # [T, 3, H, W]
    return torch_resize(frames, job.input_size)


RUNNERS = {
    "decode_only": _decode_only,
    "decode_only[index]": _decode_only,
    "decode_only[keyframe]": _decode_only,
    "patch_stream": _patch_stream,
    "decord": _decord,
    "torchcodec": _torchcodec,
}


def run(job: Job, plan: Plan):
    """The API's output for one video: frames uint8 ``[T, 3, S, S]``, or for
    ``patch_stream`` ``(patches, meta_fields, meta_scores)``."""
    return RUNNERS[job.api](job, plan)


def run_checked(job: Job, plan: Plan) -> tuple[int, ...]:
    """``run`` and check the output's shape; returns the shape."""
    out = run(job, plan)
    first = out[0] if isinstance(out, tuple) else out
    shape = tuple(first.shape)
    t, s = job.sequence_length, job.input_size
    expected = (job.k_keep, 3, job.patch_size, job.patch_size) if isinstance(out, tuple) else None
    if expected is None:
        expected = (t, 3, s, s)
        if first.dtype != torch.uint8:
            raise ValueError(f"{job.api} returned {first.dtype}, expected uint8")
    if shape != expected:
        raise ValueError(f"{job.api} returned shape {shape}, expected {expected}")
    return shape


def worker_init(torch_threads: int = 1) -> None:
    """Pool-process start: load the libraries and compile the kernels once.

    Like PyTorch's DataLoader workers, each process gets ``torch_threads``
    intra-op threads (cores // workers): with torch's default (all cores) in
    every process, OpenMP threads spin against the other processes' decodes.
    """
    torch.set_num_threads(max(1, torch_threads))
    import cps_ray  # noqa: F401
    from cps_ray._kernels import cpu

    cpu.warmup()
    try:
        import decord  # noqa: F401
    except ImportError:
        pass


def run_in_worker(job: Job, plan: Plan):
    """Process-pool entry: the output comes back to the parent (pickled), as
    it must for a data loader; GPU outputs are copied to the CPU first, since
    CUDA tensors cannot outlive the process that made them."""
    out = run(job, plan)
    if isinstance(out, tuple):
        return tuple(t.cpu() for t in out)
    return out.cpu()


def skip_reason(api: str, decode_backend: str, process_backend: str | None) -> str | None:
    """Why this machine cannot run the combination, found without running it."""
    gpu_wanted = decode_backend == "gpu" or process_backend == "gpu"
    if gpu_wanted and not torch.cuda.is_available():
        return "no CUDA device on this machine (torch.cuda.is_available() is False)"
    return None

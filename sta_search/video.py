"""Video frames in and out: normalising pipeline outputs, mp4 files, side-by-side clips, fidelity metrics.

Frames are always ``(frames, height, width, 3)`` uint8 arrays here. Metrics come from scikit-image
(``peak_signal_noise_ratio``, ``structural_similarity``) computed per frame and averaged over frames;
mp4 files are written and read through imageio's ffmpeg plugin (imageio-ffmpeg ships the binary).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_FPS = 16


def to_uint8_frames(video) -> np.ndarray:
    """One video from a diffusers pipeline output -> ``(F, H, W, 3)`` uint8.

    Accepts what ``pipe(...).frames[0]`` holds for ``output_type="np"`` (float in [0, 1], ``(F, H, W, C)``),
    for ``output_type="pil"`` (a list of PIL images), for ``output_type="pt"`` (``(F, C, H, W)`` float
    tensors in [0, 1]) or an already-uint8 array. Grey frames are repeated to 3 channels.
    """
    if isinstance(video, (list, tuple)):
        frames = np.stack([np.asarray(frame) for frame in video])
    elif hasattr(video, "detach"):  # torch tensor, (F, C, H, W)
        frames = video.detach().float().cpu().numpy()
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.transpose(0, 2, 3, 1)
    else:
        frames = np.asarray(video)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4:
        raise ValueError(f"expected a video of shape (frames, height, width, channels), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    return np.ascontiguousarray(frames)


def _even_size(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad the last row / column by edge replication."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def ffmpeg_available() -> bool:
    """Whether imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package) can be imported."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_mp4(path, frames: np.ndarray, fps: int = DEFAULT_FPS, quality: int = 8) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as an H.264 mp4 (yuv420p, every player reads it).

    Without ``imageio-ffmpeg`` (a declared dependency, but missing from some managed environments) the frames
    are written as an animated GIF next to it instead (``.gif``, Pillow), with a warning: returns the path written.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if not ffmpeg_available():
        from PIL import Image

        gif = path.with_suffix(".gif")
        warnings.warn(f"imageio-ffmpeg is not installed: {gif.name} written as a GIF instead of an mp4")
        images = [Image.fromarray(frame) for frame in to_uint8_frames(frames)]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return gif
    frames = _even_size(to_uint8_frames(frames))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    quality=quality, pixelformat="yuv420p", macro_block_size=1,
                                    ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def read_mp4(path) -> np.ndarray:
    """All frames of a video file as ``(F, H, W, 3)`` uint8."""
    import imageio.v2 as imageio

    if Path(path).suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return np.stack([np.asarray(frame)[..., :3] for frame in reader])
    finally:
        reader.close()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two equally long clips next to each other (left | white gap | right)."""
    left, right = to_uint8_frames(left), to_uint8_frames(right)
    if left.shape[0] != right.shape[0] or left.shape[1] != right.shape[1]:
        raise ValueError(f"clips differ in frames or height: {left.shape} vs {right.shape}")
    spacer = np.full((left.shape[0], left.shape[1], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=2)


@dataclass(frozen=True)
class Fidelity:
    """Frame-averaged fidelity of a video against a reference video (8-bit frames)."""

    psnr_db: float          # mean over frames; inf when every frame is identical
    ssim: float             # mean over frames, in [-1, 1]
    max_abs_diff: int       # largest 8-bit pixel difference
    frames: int

    def to_json(self) -> dict:
        return {"psnr_db": _json_float(self.psnr_db), "ssim": float(self.ssim),
                "max_abs_diff": int(self.max_abs_diff), "frames": int(self.frames)}


def _json_float(x: float):
    return "inf" if math.isinf(x) else float(x)


def fidelity(video: np.ndarray, reference: np.ndarray) -> Fidelity:
    """PSNR and SSIM of ``video`` against ``reference``, per frame with scikit-image, averaged over frames."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    video, reference = to_uint8_frames(video), to_uint8_frames(reference)
    if video.shape != reference.shape:
        raise ValueError(f"videos differ in shape: {video.shape} vs {reference.shape}")
    psnrs, ssims = [], []
    side = min(video.shape[1], video.shape[2])
    win_size = min(7, side if side % 2 else side - 1)
    for frame, ref in zip(video, reference):
        if np.array_equal(frame, ref):
            psnrs.append(math.inf)
            ssims.append(1.0)
            continue
        psnrs.append(float(peak_signal_noise_ratio(ref, frame, data_range=255)))
        ssims.append(float(structural_similarity(ref, frame, data_range=255, channel_axis=-1, win_size=win_size)))
    diff = int(np.abs(video.astype(np.int16) - reference.astype(np.int16)).max()) if video.size else 0
    return Fidelity(psnr_db=float(np.mean(psnrs)), ssim=float(np.mean(ssims)), max_abs_diff=diff,
                    frames=int(video.shape[0]))

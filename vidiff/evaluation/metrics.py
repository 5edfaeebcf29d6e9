"""Temporal-consistency metrics as pure functions over `f h w 3` uint8 frames.

Each follows a published definition, named in its docstring:
  temporal_flickering   VBench (Huang et al., CVPR 2024), temporal_flickering dimension
  warping_error         Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018
  motion_magnitude      mean / top-5% mean optical-flow magnitude (the statistic VBench's dynamic degree uses)
  dynamic_degree        VBench's decision rule, on OpenCV flow instead of RAFT (approximate)
  frame_ssim/psnr       Wang et al. 2004 SSIM and PSNR between consecutive frames
  tof                   TecoGAN's tOF (Chu et al., SIGGRAPH 2020), against a reference video
  clip_consistency      mean cosine of CLIP image embeddings (consecutive pairs and all pairs)

Optical flow is OpenCV's DIS (medium preset, default) or Farneback, computed once per video
(`flows`) and shared by the flow-based metrics.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

FLOW_METHODS = {"dis": "opencv-dis-medium", "farneback": "opencv-farneback"}


@dataclass
class Score:
    """A metric's value plus its per-pair values (consecutive frame pairs)."""

    value: float | bool | None
    per_pair: np.ndarray = field(default_factory=lambda: np.zeros(0))
    extra: dict = field(default_factory=dict)


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be f h w 3 uint8, got shape {frames.shape} dtype {frames.dtype}")
    return frames


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ValueError("the flow-based metrics need OpenCV: pip install opencv-python-headless") from None
    return cv2


def sample_frames(frames: np.ndarray, fps: float, target_fps: float = 8.0) -> tuple[np.ndarray, int]:
    """Every `round(fps / target_fps)`-th frame (at least every frame), as VBench samples at ~8 fps."""
    interval = max(1, round(fps / target_fps)) if target_fps else 1
    return frames[::interval], interval


# ---- flicker (VBench) ----------------------------------------------------------------------------
def temporal_flickering(frames) -> Score:
    """VBench temporal flickering: (255 - mean over pairs of mean |frame_i - frame_i+1|) / 255; higher is steadier."""
    f = _check(frames).astype(np.float32)
    if len(f) < 2:
        return Score(None)
    mae = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))
    return Score(float((255.0 - mae.mean()) / 255.0), (255.0 - mae) / 255.0)


# ---- optical flow ---------------------------------------------------------------------------------
def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Flow `h w 2` (x, y pixels) taking frame a to frame b: b(x + flow(x)) ~ a(x)."""
    cv2 = _cv2()
    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(ga, gb, None)
    if method == "farneback":       # TecoGAN's parameters
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"flow method must be one of {list(FLOW_METHODS)}, got {method!r}")


def flows(frames, method: str = "dis") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Forward (t -> t+1) and backward (t+1 -> t) flow for every consecutive pair."""
    f = _check(frames)
    fw = [optical_flow(f[i], f[i + 1], method) for i in range(len(f) - 1)]
    bw = [optical_flow(f[i + 1], f[i], method) for i in range(len(f) - 1)]
    return fw, bw


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x), bilinear, edges clamped (Lai et al.'s Resample2d)."""
    cv2 = _cv2()
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(np.ascontiguousarray(image, dtype=np.float32), gx + flow[..., 0], gy + flow[..., 1],
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Lai et al. 2018 (after Ruder et al. 2016): True where pixel x of frame t is occluded or on a motion boundary.

    occluded:  |fw + bw~|^2 > 0.01 (|fw|^2 + |bw~|^2) + 0.5, with bw~(x) = bw(x + fw(x));
    boundary:  |grad fw_x|^2 + |grad fw_y|^2 > 0.01 |fw|^2 + 0.002 (forward differences).
    """
    fw = fw.astype(np.float64)
    bw_w = warp(bw, fw.astype(np.float32)).astype(np.float64)
    mag = lambda v: v[..., 0] ** 2 + v[..., 1] ** 2              # noqa: E731 (squared magnitude)
    occluded = mag(fw + bw_w) > 0.01 * (mag(bw_w) + mag(fw)) + 0.5
    grad = np.zeros_like(fw[..., 0])
    for c in range(2):
        du = np.zeros_like(grad)
        dv = np.zeros_like(grad)
        du[:, :-1] = fw[:, :-1, c] - fw[:, 1:, c]
        dv[:-1, :] = fw[:-1, :, c] - fw[1:, :, c]
        grad += du ** 2 + dv ** 2
    boundary = grad > 0.01 * mag(fw) + 0.002
    return occluded | boundary


def warping_error(frames, flow_pairs=None, method: str = "dis") -> Score:
    """Lai et al. 2018 warping error: masked per-channel MSE of warped frame t+1 vs frame t, in [0, 1] units; lower is better."""
    f = _check(frames)
    if len(f) < 2:
        return Score(None)
    fw, bw = flow_pairs if flow_pairs is not None else flows(f, method)
    errs, kept = [], []
    for t in range(len(f) - 1):
        cur, nxt = f[t].astype(np.float32) / 255, f[t + 1].astype(np.float32) / 255
        valid = ~occlusion_mask(fw[t], bw[t])
        diff = (warp(nxt, fw[t]) - cur) * valid[..., None]
        n = 3 * valid.sum() or diff.size                          # all occluded: plain mean (zero)
        errs.append(float(np.square(diff).sum() / n))
        kept.append(float(valid.mean()))
    return Score(float(np.mean(errs)), np.array(errs), {"non_occluded_fraction": float(np.mean(kept))})


# ---- motion ------------------------------------------------------------------------------------------
def _top5(rad: np.ndarray) -> float:
    cut = int(rad.size * 0.05)                                    # VBench's cut_index
    return float(np.sort(rad.ravel())[::-1][:cut].mean()) if cut else float(rad.max())


def motion_magnitude(flow_list) -> Score:
    """Mean flow magnitude per pair (pixels/frame at the analysis fps), with the top-5% mean as `top5`."""
    if not flow_list:
        return Score(None)
    rads = [np.sqrt(fl[..., 0] ** 2 + fl[..., 1] ** 2) for fl in flow_list]
    mean = np.array([r.mean() for r in rads])
    top = np.array([_top5(r) for r in rads])
    return Score(float(mean.mean()), mean, {"top5": float(top.mean()), "top5_per_pair": top})


def dynamic_degree(flow_list, height: int, width: int, num_frames: int) -> Score:
    """VBench's dynamic-degree rule: moving if >= round(4 n/16) pairs have top-5% flow > 6 min(H,W)/256 px.

    Approximate: VBench measures RAFT flow; this uses the same OpenCV flow as the other metrics.
    """
    if not flow_list:
        return Score(None)
    threshold = 6.0 * min(height, width) / 256.0
    needed = round(4 * (num_frames / 16.0))                      # Python's round, as VBench
    top = np.array([_top5(np.sqrt(fl[..., 0] ** 2 + fl[..., 1] ** 2)) for fl in flow_list])
    count = int((top > threshold).sum())
    return Score(bool(needed == 0 or count >= needed), top,            # VBench's loop: 0 needed -> moving
                 {"threshold_px": threshold, "pairs_needed": needed, "pairs_moving": count, "approximate": True})


def track_displacement(flow_list, stride: int = 2) -> np.ndarray:
    """Net displacement (px) of a grid of points carried from the first frame through every forward flow."""
    cv2 = _cv2()
    h, w = flow_list[0].shape[:2]
    ys, xs = np.mgrid[0:h:stride, 0:w:stride].astype(np.float32)
    px, py = xs.copy(), ys.copy()
    for fl in flow_list:
        fx = cv2.remap(np.ascontiguousarray(fl[..., 0]), px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fy = cv2.remap(np.ascontiguousarray(fl[..., 1]), px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        px, py = np.clip(px + fx, 0, w - 1), np.clip(py + fy, 0, h - 1)
    return np.hypot(px - xs, py - ys)


def motion_guard(flow_list, height: int, width: int) -> Score:
    """Does anything really move? True when tracked content travels further than sampling noise explains.

    Unlike VBench's per-pair rule it accumulates motion over the clip (a shape that creeps 1.3 px a
    frame moves 30 px in 24 frames), and it measures the video's own noise floor: per pair, the
    median deviation of the flow from its median vector (flow on noise points every way; a pan or a
    moving object leaves most of it coherent). Moving = the top 1% of tracked displacements exceeds
    both a tenth of the frame's short side and 4x the random walk that noise floor would produce.
    (A tenth: on the shipped shapes model, 16-frame "staying still" videos wobble 1.6-6.2 px at 64 px,
    moving ones travel 12.5-21.7 px; twice VBench's per-pair threshold, 3 px there, called 4 of 9 still
    videos moving.)
    """
    if not flow_list:
        return Score(None)
    floors = []
    for fl in flow_list:
        dev = fl.reshape(-1, 2) - np.median(fl.reshape(-1, 2), axis=0)
        floors.append(float(np.median(np.hypot(dev[:, 0], dev[:, 1]))))
    noise_walk = float(np.sqrt(np.sum(np.square(floors))))
    net = track_displacement(flow_list)
    moved = float(np.percentile(net, 99))
    bar = max(0.1 * min(height, width), 4.0 * noise_walk)
    return Score(bool(moved > bar), np.array(floors),
                 {"displacement_px": moved, "noise_walk_px": noise_walk, "bar_px": bar})


# ---- frame similarity --------------------------------------------------------------------------------
def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    cv2 = _cv2()
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)   # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    pad = 5 if min(s.shape[:2]) > 10 else 0                       # Wang et al.: 'valid' window positions
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def frame_ssim(frames) -> Score:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, per RGB channel) of consecutive frames."""
    f = _check(frames)
    if len(f) < 2:
        return Score(None)
    s = np.array([_ssim(f[i], f[i + 1]) for i in range(len(f) - 1)])
    return Score(float(s.mean()), s)


PSNR_CAP = 100.0     # identical frames: infinite PSNR, reported as this


def frame_psnr(frames) -> Score:
    """PSNR (dB, peak 255) of consecutive frames; identical frames count as 100 dB."""
    f = _check(frames).astype(np.float64)
    if len(f) < 2:
        return Score(None)
    mse = np.square(f[1:] - f[:-1]).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        p = np.minimum(10 * np.log10(255.0 ** 2 / mse), PSNR_CAP)
    return Score(float(p.mean()), p)


# ---- against a reference: TecoGAN tOF -------------------------------------------------------------
def _crop_8x8(img: np.ndarray) -> np.ndarray:
    """TecoGAN's centre crop to a multiple of 32 with at least 16 pixels of margin."""
    oh, ow = img.shape[:2]
    h, w = oh // 32 * 32, ow // 32 * 32
    while h > oh - 16:
        h -= 32
    while w > ow - 16:
        w -= 32
    if h <= 0 or w <= 0:             # too small to crop: keep everything
        return img
    y, x = (oh - h) // 2, (ow - w) // 2
    return img[y:y + h, x:x + w]


def tof(frames, reference) -> Score:
    """TecoGAN tOF: mean |flow(video) - flow(reference)| (L2 over the flow vector), Farneback flows; lower is better."""
    f, r = _check(frames), _check(reference)
    if f.shape != r.shape:
        raise ValueError(f"reference has shape {r.shape}, the video {f.shape}; tOF needs the same frames and size")
    if len(f) < 2:
        return Score(None)
    vals = []
    for i in range(len(f) - 1):
        d = _crop_8x8(optical_flow(r[i], r[i + 1], "farneback")) - _crop_8x8(optical_flow(f[i], f[i + 1], "farneback"))
        vals.append(float(np.sqrt((d * d).sum(-1)).mean()))
    return Score(float(np.mean(vals)), np.array(vals))


# ---- CLIP ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _load_clip(model_dir: str):
    """CLIP model + image processor from a local folder (cached: a benchmark scores many videos)."""
    from transformers import CLIPImageProcessor, CLIPModel

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"CLIP model folder {model_dir!r} does not exist")
    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True).eval()
        processor = CLIPImageProcessor.from_pretrained(model_dir, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(f"{model_dir!r} is not a CLIP folder with safetensors weights and "
                                f"preprocessor_config.json ({str(e).splitlines()[0][:120]})") from None
    return model, processor


def clip_embeddings(frames, model_dir: str | os.PathLike, batch: int = 32) -> np.ndarray:
    """Unit-length CLIP image embeddings `(f, d)` of the frames, from a local transformers CLIP folder."""
    import torch

    f = _check(frames)
    model, processor = _load_clip(str(model_dir))
    feats = []
    with torch.no_grad():
        for i in range(0, len(f), batch):
            pixels = processor(images=list(f[i:i + batch]), return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=pixels)
            feats.append(getattr(out, "pooler_output", out))
    return torch.nn.functional.normalize(torch.cat(feats).float(), dim=-1).numpy()


def clip_consistency(frames, model_dir: str | os.PathLike, batch: int = 32, embeddings=None) -> Score:
    """Mean cosine similarity of CLIP image embeddings: consecutive pairs (value) and all pairs (`all_pairs`).

    The model and its image processor (resize, centre crop, CLIP normalisation) are read from a
    local transformers CLIP folder; nothing is downloaded.
    """
    e = clip_embeddings(frames, model_dir, batch) if embeddings is None else embeddings
    if len(e) < 2:
        return Score(None)
    sims = e @ e.T
    consecutive = np.array([sims[i, i + 1] for i in range(len(e) - 1)])
    off = sims[~np.eye(len(e), dtype=bool)]
    return Score(float(consecutive.mean()), consecutive, {"all_pairs": float(off.mean())})


# ---- seams and drift (long videos made of windows) -----------------------------------------------------
def seam_ratio(per_pair, seams=None, outliers: int = 1) -> dict:
    """How much worse the pairs at seams are than the rest: mean over seam pairs / median over the others.

    `per_pair[i]` scores the pair (frame i, frame i+1), higher = worse (mean abs difference, warping
    error). A seam at frame s (the first frame of a new window) is pair s - 1. Without known seams the
    `outliers` worst pairs stand in for them, so a cut spliced into any footage shows up. Returns
    {"ratio", "pairs", "seam_mean", "other_median", "known"}; ratio is None when the other pairs are all
    zero (a still video) or there are no other pairs.
    """
    v = np.asarray(per_pair, dtype=np.float64)
    known = seams is not None
    if known:
        bad = sorted({int(s) - 1 for s in seams if 1 <= int(s) <= len(v)})
    else:
        bad = sorted(np.argsort(-v, kind="stable")[:max(0, min(outliers, len(v) - 1))].tolist())
    rest = np.delete(v, bad)
    out = {"pairs": bad, "known": known, "seam_mean": float(v[bad].mean()) if bad else None,
           "other_median": float(np.median(rest)) if len(rest) else None, "ratio": None}
    if bad and len(rest) and out["other_median"] > 0:
        out["ratio"] = out["seam_mean"] / out["other_median"]
    return out


def colour_histogram_drift(frames, bins: int = 8) -> np.ndarray:
    """Each frame's colour-histogram intersection with frame 0 (1 = same colours), `bins` per channel."""
    f = _check(frames)
    idx = (f.astype(np.int64) * bins // 256)
    codes = (idx[..., 0] * bins + idx[..., 1]) * bins + idx[..., 2]
    hists = np.stack([np.bincount(c.ravel(), minlength=bins ** 3) for c in codes]).astype(np.float64)
    hists /= hists.sum(1, keepdims=True)
    return np.minimum(hists, hists[:1]).sum(1)


def mean_abs_difference(frames) -> np.ndarray:
    """Per pair: mean |frame_i+1 - frame_i| over pixels and channels (0-255); VBench flicker's per-pair term."""
    f = _check(frames).astype(np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))

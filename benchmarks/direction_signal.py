"""How much the motion word is worth to the loss where a video's trajectory is chosen, and how much a model uses.

    python benchmarks/direction_signal.py                                   # the shipped model
    python benchmarks/direction_signal.py --model runs/shapes-video/model --clips 600

At high noise (t in [800, 1000), sigma ~ 35-160) the best possible prediction is the mean clip
given what the prompt says. This compares, on the same held-out clips, noise and t:

- oracles that predict the per-frame mean clip of the training clips with the same colour, or
  with the same colour *and* motion (read from captions), or the global mean;
- the model with the right captions and with the direction word swapped (left <-> right,
  up <-> down).

`oracle colour - oracle colour+motion` is what knowing the direction can win; `swapped - right`
is what the model has learned of it. A class mean from n clips misses the true mean by
(within-class variance) / n on average; the oracle losses have that subtracted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.data.clips import ClipDataset  # noqa: E402
from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402
from vidiff.diffusion.schedule import per_frame  # noqa: E402
from vidiff.training.train import Objective  # noqa: E402

SWAP = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}


def main(argv=None) -> int:
    """Print the oracle and model losses at high noise."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--data", default="data/shapes", help="shapes dataset folder")
    ap.add_argument("--clips", type=int, default=1200, help="training clips for the class means")
    ap.add_argument("--eval", type=int, default=48, help="held-out clips scored")
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args(argv)

    pipe = VideoPipeline.from_pretrained(args.model)
    unet, schedule, codec = pipe.unet.float().eval(), pipe.schedule, pipe.codec
    ds = ClipDataset(args.data, num_frames=args.frames, size=(64, 64), crop="center")
    if len(ds) < args.clips + args.eval:
        raise SystemExit(f"--data has {len(ds)} clips, needs --clips + --eval = {args.clips + args.eval}")

    def load(i):
        item = ds[(i, 1000 + i)]
        words = item["caption"].split()
        return codec.encode(item["video"][None])[0], words[1], words[-1], item["caption"]

    train = [load(i) for i in range(args.clips)]
    groups: dict = {}
    for x, colour, motion, _ in train:
        for key in ((colour,), (colour, motion)):
            groups.setdefault(key, []).append(x)
    mean = {k: torch.stack(v).mean(0) for k, v in groups.items()}
    # expected excess loss of a class mean estimated from n clips: within-class variance / n
    excess = {k: (torch.stack(v).var(0).mean() / len(v)).item() if len(v) > 1 else float("inf")
              for k, v in groups.items()}
    overall = torch.stack([x for x, *_ in train]).mean(0)

    held = [load(len(ds) - 1 - i) for i in range(args.eval)]
    x0 = torch.stack([x for x, *_ in held])
    b, f = x0.shape[0], x0.shape[2]
    g = torch.Generator().manual_seed(0)
    t = torch.randint(800, 1000, (b, 1), generator=g).expand(b, f).contiguous()
    noise = torch.randn(x0.shape, generator=g)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t)
    ab = per_frame(schedule.alphas_cumprod[t].float(), x0)

    def oracle(guess, keys=None):
        eps = (x_t - ab.sqrt() * guess) / (1 - ab).sqrt()
        loss = ((ab.sqrt() * eps - (1 - ab).sqrt() * guess - target) ** 2).mean().item()
        if keys is not None:          # v = -sqrt(1 - ab) x0 + ...: the x0 error is scaled by 1 - ab
            loss -= sum(excess[k] for k in keys) / len(keys) * (1 - ab).mean().item()
        return loss

    objective = Objective(unet, schedule)

    def model(captions):                # the training loss, no frame given
        with torch.no_grad():
            return objective.loss(x0, pipe.text_encoder(captions).float(), t, noise, torch.zeros(b, f)).item()

    right = model([c for *_, c in held])
    swapped = model([" ".join(c.split()[:-1] + [SWAP[c.split()[-1]]]) for *_, c in held])
    rows = [("oracle: global mean", oracle(overall.expand_as(x0))),
            ("oracle: colour mean", oracle(torch.stack([mean[(c,)] for _, c, _, _ in held]),
                                           [(c,) for _, c, _, _ in held])),
            ("oracle: colour + motion mean", oracle(torch.stack([mean[(c, m)] for _, c, m, _ in held]),
                                                    [(c, m) for _, c, m, _ in held])),
            ("model, right captions", right),
            ("model, direction swapped", swapped)]
    for name, value in rows:
        print(f"{name:30s} {value:.5f}")
    print(f"direction worth (oracle): {rows[1][1] - rows[2][1]:+.5f}   used by the model: {swapped - right:+.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a training step of the built-in model spends its GPU time (BENCHMARKS.md, "Training throughput").

Times rendering a batch, a bf16-autocast forward and a full optimiser step at batch 256 and 1024
in NCHW and channels_last, the foreach EMA update, and prints the CUDA kernels that dominate one
channels_last forward+backward at batch 256. Needs a GPU; about a minute on an H200.

    python bench/profile_training.py      # device tool: carry the diffusers wheel as .whl/
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from backend.catpeople.render import render, sample_factors  # noqa: E402
from backend.catpeople.train import TrainConfig, build_unet  # noqa: E402


def timed_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("profile_training.py needs a CUDA GPU")
    device = "cuda"
    torch.backends.cudnn.benchmark = True
    generator = torch.Generator(device).manual_seed(0)
    for batch in (256, 1024):
        print(f"render batch {batch}: {timed_ms(lambda: render(sample_factors(batch, generator, device), 64)):.1f} ms")
    for channels_last in (False, True):
        unet = build_unet(TrainConfig(out="unused")).to(device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        unet = unet.to(memory_format=layout)
        optimiser = torch.optim.AdamW(unet.parameters())
        for batch in (256, 1024):
            x = torch.randn(batch, 3, 64, 64, device=device).contiguous(memory_format=layout)
            t = torch.randint(0, 1000, (batch,), device=device)

            def forward():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    unet(x, t)

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = unet(x, t).sample.float().pow(2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()

            print(f"channels_last={channels_last} batch {batch}: forward {timed_ms(forward):.1f} ms, step {timed_ms(step):.1f} ms")
    ema = EMAModel(unet.parameters(), foreach=True, use_ema_warmup=True)
    print(f"EMA update (foreach): {timed_ms(lambda: ema.step(unet.parameters())):.1f} ms")
    # (the last U-Net built above is the channels_last one, as in the run BENCHMARKS.md quotes)
    x = torch.randn(256, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (256,), device=device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = unet(x, t).sample.float().pow(2).mean()
        loss.backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()

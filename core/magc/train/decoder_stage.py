"""Stage 3 (lite-size MAGC): the autoencoder's decoder learns to read the class map.

The map is known at the decoder at full resolution, but stages 1-2 let it reach the image
only through the 1/8-resolution latent: the denoiser sees per-class fractions of 8 x 8 cells,
so a building's outline is lost (measured: IoU of buildings 0.19 on reconstructions against
0.62 on originals, the largest gap of any class). Here the decoder also reads the map at
1/4 and 1/2 resolution (``AutoencoderConfig.decoder_map_classes``), and everything before it
is frozen. It learns on what decoding gives it: ẑ0 sampled by the trained denoiser from z~
of a random rate, with the preset's sampler, judged like stage 2's decode path

    loss = D(AE.dec(ẑ0, map), x) + semantic_weight · CE(critic(AE.dec(ẑ0, map)), labels)

(D: stage 1's distortion; the critic: the independent segmenter of stage 2). The map paths
start at zero, so step 0 computes what the decoder did before this stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.codec import MagcCodec, class_fractions
from .critic import DECODER_SEMANTIC_WEIGHT, critic_loss
from .data import CropSampler
from .loop import LoopConfig, run_loop
from .magc_stages import distortion


@torch.no_grad()
def sampled_latents(codec: MagcCodec, x: torch.Tensor, maps: torch.Tensor, rate: int) -> torch.Tensor:
    """ẑ0 as decoding makes it: encode, quantise at ``rate``, synthesise z~, sample."""
    map_input = class_fractions(maps, codec.preset.map.num_classes)
    z0 = codec.autoencoder.encode(x)
    z_tilde = codec.lcm(z0, codec.lcm.map_encoder(map_input), rate)["z_tilde"]
    return codec.generate(z_tilde, map_input, lambda i: torch.randn_like(z_tilde))


def train_decoder(codec: MagcCodec, sampler: CropSampler, run_dir: Path, cfg: LoopConfig, batch: int,
                  critic: torch.nn.Module | None = None, semantic_weight: float = DECODER_SEMANTIC_WEIGHT, seed: int = 0) -> None:
    if not codec.preset.autoencoder.decoder_map_classes:
        raise ValueError(f"preset {codec.preset.name}: its decoder reads no map (autoencoder.decoder_map_classes)")
    codec.requires_grad_(False).eval()
    decoder = codec.autoencoder.decoder.requires_grad_(True).train()
    optimizers = {"main": torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=0.0)}
    rng = np.random.default_rng(seed)

    def step(i: int) -> dict[str, float]:
        rate = int(rng.integers(len(codec.preset.rates)))
        x, maps, labels = sampler.batch(batch)
        decoded = codec.autoencoder.decode(sampled_latents(codec, x, maps, rate), maps)
        loss, ms, mse = distortion(decoded, x)
        logs = {"msssim": 1 - ms.item(), "psnr": (-10 * torch.log10(mse)).item()}
        if critic is not None:
            ce, accuracy = critic_loss(critic, decoded, labels)
            loss = loss + semantic_weight * ce
            logs.update(critic_ce=ce.item(), critic_accuracy=accuracy.item())
        optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizers["main"].step()
        logs["loss"] = loss.item()
        return logs

    run_loop("stage3", run_dir, cfg, {"autoencoder": codec.autoencoder}, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state, "rate": rng.bit_generator.state},
             set_rng_state=lambda s: (setattr(sampler.rng.bit_generator, "state", s["sampler"]), setattr(rng.bit_generator, "state", s["rate"])))

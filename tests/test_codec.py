"""Codecs: pixel-unshuffle round trip; the diffusers VAE wrapper decodes in frame chunks."""

import pytest
import torch

from vidiff.models.codec import PixelCodec, VaeCodec


def test_pixel_codec_round_trip_is_exact():
    video = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    codec = PixelCodec(4)
    lat = codec.encode(video)
    assert lat.shape == (2, 48, 5, 4, 6)
    assert torch.equal(codec.decode(lat), video)


def test_vae_codec_chunks_equal_one_pass():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    small, big = VaeCodec(vae, chunk=2), VaeCodec(vae, chunk=64)
    assert small.factor == 2 and small.channels == 4
    lat = small.encode(video)
    assert lat.shape == (1, 4, 5, 8, 8)
    torch.testing.assert_close(lat, big.encode(video), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small.decode(lat), big.decode(lat), rtol=1e-4, atol=1e-5)

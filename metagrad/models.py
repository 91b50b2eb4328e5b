"""Small reference models used by the experiments and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int] = (1, 40, 40, 1), activation: type[nn.Module] = nn.ReLU,
        *, seed: int | None = 0, dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu") -> nn.Sequential:
    """Fully connected net, e.g. the 1-40-40-1 ReLU MLP of Finn et al. 2017 (sinusoid).

    Parameters
    ----------
    sizes : Sequence[int]
        Widths from input to output: ``(1, 40, 40, 1)`` is Linear(1, 40), activation,
        Linear(40, 40), activation, Linear(40, 1).
    activation : type[torch.nn.Module]
        The activation class put between the linear layers (``nn.Tanh`` or ``nn.Softplus``
        where finite differences or a smooth Hessian matter).
    seed : int or None
        Seed of torch's default initialisation (the global generator's state is restored
        afterwards); None draws from the global generator as it is.
    dtype : torch.dtype
        dtype of the parameters.
    device : str or torch.device
        Where the parameters are put.

    Returns
    -------
    torch.nn.Sequential
        The network.
    """
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if seed is not None:
        torch.random.set_rng_state(gen_state)
    return nn.Sequential(*layers).to(dtype=dtype, device=device)


def convnet(ways: int = 5, channels: int = 32, in_channels: int = 1, image_size: int = 28,
            *, seed: int | None = 0, dtype: torch.dtype = torch.float32,
            device: str | torch.device = "cpu") -> nn.Sequential:
    """The 4-block conv net of Finn et al. 2017 for 28×28 Omniglot-shaped inputs.

    Each block: 3×3 conv (stride 2 for 28×28 as in the paper), ReLU; no batch
    norm, so the model is a pure function of its parameters under ``vmap``. A final
    linear layer maps the flattened features to ``ways`` logits.

    Parameters
    ----------
    ways : int
        Number of output classes.
    channels : int
        Channels of every conv block.
    in_channels : int
        Channels of the input images.
    image_size : int
        Height and width of the input images.
    seed : int or None
        Seed of torch's default initialisation (the global generator's state is restored
        afterwards); None draws from the global generator as it is.
    dtype : torch.dtype
        dtype of the parameters.
    device : str or torch.device
        Where the parameters are put.

    Returns
    -------
    torch.nn.Sequential
        The network, taking ``(batch, in_channels, image_size, image_size)`` inputs.
    """
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    blocks: list[nn.Module] = []
    c, size = in_channels, image_size
    for _ in range(4):
        blocks += [nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU()]
        c, size = channels, (size + 1) // 2
    model = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(channels * size * size, ways))
    if seed is not None:
        torch.random.set_rng_state(gen_state)
    return model.to(dtype=dtype, device=device)

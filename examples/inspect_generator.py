"""Trace your own generator and read its costs: the first step before compressing it.

Run: `.venv/bin/python examples/inspect_generator.py`. Copy it and replace `MyGenerator` with your
model (or import it); pass the inputs your forward takes, with a realistic image size, since
MACs scale with resolution.
"""

import torch
from torch import nn

import gcc_gan


class MyGenerator(nn.Module):
    """A pix2pix-style encoder-decoder with one skip, written the way research code often is."""

    def __init__(self, ngf: int = 32):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, ngf, 4, 2, 1), nn.LeakyReLU(0.2))
        self.mid = nn.Sequential(nn.Conv2d(ngf, ngf, 3, 1, 1), nn.InstanceNorm2d(ngf), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * ngf, 3, 4, 2, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        d = self.down(x)
        y = self.up(torch.cat([d, self.mid(d)], dim=1))
        return torch.tanh(y).view(n, 3, h, w)


def main() -> None:
    model = MyGenerator().eval()
    graph = gcc_gan.trace(model, (torch.randn(1, 3, 256, 256),))
    print(graph.summary())
    print(f"real MACs {graph.macs / 1e9:.3f}G; as papers count them {graph.lit_macs / 1e9:.3f}G")
    x = torch.randn(4, 3, 256, 256)  # the graph takes any batch size
    print("max |graph - eager| at batch 4:", (graph(x) - model(x)).abs().max().item())


if __name__ == "__main__":
    main()

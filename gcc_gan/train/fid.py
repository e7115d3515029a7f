"""FID and KID on digits, with a small digits classifier trained here as the feature extractor
(no Inception weights can be downloaded; the feature space is this classifier's penultimate
layer, so the figures compare generators with each other, not with published FIDs).

With feature means mu_r, mu_g and covariances S_r, S_g of real and generated samples
(Heusel et al. 2017):

    FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r^{1/2} S_g S_r^{1/2})^{1/2})

computed in float64 from symmetric eigendecompositions. `digits_scores` first divides all
features by one constant, the real features' root mean square, so that a.b / d is O(1) in the
kernel below (raw, it is ~20 and the cubic kernel's variance swamps KID); FID scales by the same
constant squared, identically for every generator. KID (Binkowski et al. 2018) is the
unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets:

    MMD^2 = sum_{i!=j} k(r_i, r_j) / (m(m-1)) + sum_{i!=j} k(g_i, g_j) / (m(m-1))
            - 2 sum_{i,j} k(r_i, g_j) / m^2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .loop import CheckpointConfig, SupervisedTrainer, run_steps
from .tasks import Batches, digits_split


class DigitsClassifier(nn.Module):
    """conv3x3(32) ReLU maxpool, conv3x3(64) ReLU maxpool, linear(features) ReLU, linear(10)."""

    def __init__(self, size: int = 16, features: int = 128):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"the classifier takes {self.size}x{self.size} digits, got "
                             f"{tuple(x.shape[-2:])}; sample the generator at that size")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierReport:
    test_accuracy: float
    train_steps: int
    seconds: float


class _Pairs:
    """Endless (x, y) batches of the training split, with small random shifts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int):
        self.index = Batches(torch.arange(len(x)), batch, seed)
        self.x, self.y = x, y

    def __next__(self):
        idx = next(self.index)
        x = self.x[idx]
        shift = tuple(int(s) for s in torch.randint(-1, 2, (2,), generator=self.index.generator))
        return torch.roll(x, shift, dims=(2, 3)), self.y[idx]

    def state_dict(self):
        return self.index.state_dict()

    def load_state_dict(self, state):
        self.index.load_state_dict(state)


def train_digits_classifier(size: int = 16, steps: int = 1500, batch: int = 64, seed: int = 0,
                            progress: bool | None = None,
                            checkpoint: CheckpointConfig | None = None
                            ) -> tuple[DigitsClassifier, ClassifierReport]:
    """Train the feature extractor on a fixed 80% of the digits; report held-out accuracy."""
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits_split(size, seed=seed)
    model = DigitsClassifier(size)
    trainer = SupervisedTrainer(model, _Pairs(x_train, y_train, batch, seed), steps, lr=1e-3,
                                loss="cross_entropy")
    history = run_steps(trainer.step, steps, state=trainer.state(), checkpoint=checkpoint,
                        description="digits classifier", progress=progress)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, ClassifierReport(accuracy, steps, history.seconds)


@torch.no_grad()
def embed(classifier: DigitsClassifier, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    classifier.eval()
    return torch.cat([classifier.features(images[i:i + batch].clamp(-1, 1))
                      for i in range(0, len(images), batch)]).double()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between feature sets a (n, d) and b (m, d)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross))


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 20,
                              subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between feature sets a and b."""
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = a.shape[1]
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=rng)[:m]]
        y = b[torch.randperm(len(b), generator=rng)[:m]]
        kxx, kyy, kxy = [(p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y))]
        off = m * (m - 1)
        values.append(((kxx.sum() - kxx.diagonal().sum()) / off
                       + (kyy.sum() - kyy.diagonal().sum()) / off - 2 * kxy.mean()).item())
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def digits_scores(classifier: DigitsClassifier, generated: torch.Tensor,
                  real: torch.Tensor) -> dict[str, float]:
    """FID-digits and KID-digits of generated vs real images (both (N, 1, size, size))."""
    fa, fb = embed(classifier, real), embed(classifier, generated)
    scale = fa.pow(2).mean().sqrt()  # see the module docstring: real features to unit RMS
    fa, fb = fa / scale, fb / scale
    kid, kid_std = kernel_inception_distance(fa, fb)
    return {"fid": frechet_distance(fa, fb), "kid": kid, "kid_std": kid_std}

"""Fast CPU tests of the vit_tiny backbone and the MIM and SimCLR auxiliary objectives."""
from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch

from robustbench_mtl.algorithms.mt_l1 import MTL1
from robustbench_mtl.config import TrainHParams
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import NoHParams
from robustbench_mtl.model import Model
from robustbench_mtl.objectives.simclr import nt_xent
from robustbench_mtl.registry import BACKBONES, OBJECTIVES
from robustbench_mtl.types import Batch

INFO = DataInfo("toyimg", "image", (3, 32, 32), {"y": 2}, ("g0", "g1"), (8, 8))


def make_model(seed: int = 0, simclr: dict | None = None, mim: dict | None = None, l1: bool = False) -> Model:
    torch.manual_seed(seed)
    vit = BACKBONES.get("vit_tiny")
    backbone = vit(vit.HParams(), INFO)
    objs = {}
    for name, over in (("mim", mim), ("simclr", simclr)):
        cls = OBJECTIVES.get(name)
        objs[name] = cls(cls.HParams(**(over or {})), backbone, INFO)
    if l1:
        cls = OBJECTIVES.get("l1")
        objs["l1"] = cls(cls.HParams(), backbone, INFO)
    return Model(backbone, INFO.tasks, objs)


def make_batch(n: int, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    return Batch(x, {"y": torch.randint(0, 2, (n,), generator=gen)}, torch.zeros(n, dtype=torch.long),
                 torch.zeros(n, dtype=torch.long), torch.arange(n))


def test_shapes_and_attributes() -> None:
    model, batch = make_model(), make_batch(4)
    out = model(batch.x)
    assert out.pooled.shape == (4, 64) and out.tokens.shape == (4, 1 + 64, 64)
    assert out.logits["y"].shape == (4, 2)
    assert torch.equal(out.pooled, out.tokens[:, 0])
    bb = model.backbone
    assert (bb.patch_size, bb.grid, bb.num_channels, bb.out_dim) == (4, 8, 3, 64)
    assert bb.vit.config._attn_implementation == "sdpa"
    assert model.objectives["mim"].reconstruct(out.tokens).shape == (4, 3, 32, 32)


def test_mim_mask_counts_and_blocks() -> None:
    mim = make_model().objectives["mim"]
    mask = mim.make_mask(5, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (5, 64)
    assert mask.sum(1).tolist() == [40] * 5  # 16 blocks of 8x8 px, ceil(0.6 * 16) = 10 blocks = 40 patches
    grid = mask.view(5, 4, 2, 4, 2).float()  # every 2x2 group of patches is one block: all or nothing
    assert torch.equal(grid.amin((2, 4)), grid.amax((2, 4)))
    assert not torch.equal(mask[0], mask[1])  # one mask per image


def test_masked_patches_do_not_reach_the_encoder() -> None:
    model, batch = make_model(), make_batch(2)
    model.eval()
    mim = model.objectives["mim"]
    mask = mim.make_mask(2, torch.device("cpu"))
    pix = mask.view(2, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    changed = torch.where(pix, torch.rand_like(batch.x), batch.x)
    with torch.no_grad():
        assert torch.allclose(model(batch.x, mask).tokens, model(changed, mask).tokens, atol=1e-6)
        assert not torch.allclose(model(batch.x).tokens, model(changed).tokens, atol=1e-4)


def test_mim_loss_reads_masked_pixels_only() -> None:
    mim = make_model().objectives["mim"]
    mask = mim.make_mask(3, torch.device("cpu"))
    pix = mask.view(3, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    target, recon = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    loss = mim.masked_l1(target, recon, mask)
    assert torch.allclose(loss, mim.masked_l1(torch.where(pix, target, target + 5.0), recon, mask))
    manual = ((target - recon).abs() * pix).sum() / (pix.sum() + 1e-5) / 3
    assert torch.allclose(loss, manual)
    assert not torch.allclose(loss, mim.masked_l1(torch.where(pix, target + 5.0, target), recon, mask))


def test_mim_target_is_the_normalised_view() -> None:
    model, batch = make_model(), make_batch(2)
    mim = model.objectives["mim"]
    with torch.no_grad():  # a decoder that outputs exactly the normalised crop gives zero loss
        torch.manual_seed(3)
        x = mim.view(batch.x)
        torch.manual_seed(3)
        mim.reconstruct = lambda tokens: (x - 0.5) / 0.5  # type: ignore[method-assign]
        loss, passes = mim.loss(model, batch, model(batch.x))
        torch.manual_seed(3)  # the un-normalised crop is not the target: the loss sees the difference
        mim.reconstruct = lambda tokens: x  # type: ignore[method-assign]
        raw_loss, _ = mim.loss(model, batch, model(batch.x))
    assert loss.item() < 1e-6 and passes[0].tokens.shape == (2, 65, 64)
    assert raw_loss.item() > 0.1


def test_nt_xent_matches_hand_computation() -> None:
    z1 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    z2 = torch.tensor([[0.8, 0.6], [0.0, 2.0]])
    tau = 0.5
    raw = [(1.0, 0.0), (0.6, 0.8), (0.8, 0.6), (0.0, 2.0)]  # rows of z1 then z2
    e = [(a / math.hypot(a, b), b / math.hypot(a, b)) for a, b in raw]
    dot = [[a[0] * b[0] + a[1] * b[1] for b in e] for a in e]
    manual = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        denom = sum(math.exp(dot[i][j] / tau) for j in range(4) if j != i)
        manual += -math.log(math.exp(dot[i][pos] / tau) / denom) / 4
    assert nt_xent(z1, z2, tau).item() == pytest.approx(manual, rel=1e-6)


def test_nt_xent_equals_released_code_formulation() -> None:
    torch.manual_seed(0)
    z1, z2, n = torch.randn(5, 8), torch.randn(5, 8), 5
    f = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    labels = torch.cat([torch.arange(n)] * 2)
    labels = (labels[None] == labels[:, None]).float()
    eye = torch.eye(2 * n, dtype=torch.bool)
    labels, sim = labels[~eye].view(2 * n, -1), (f @ f.T)[~eye].view(2 * n, -1)
    logits = torch.cat([sim[labels.bool()].view(2 * n, -1), sim[~labels.bool()].view(2 * n, -1)], 1)
    ref = torch.nn.functional.cross_entropy(logits / 1.0, torch.zeros(2 * n, dtype=torch.long))
    assert torch.allclose(nt_xent(z1, z2, 1.0), ref, atol=1e-6)


def _backbone_grad(model: Model) -> float:
    return sum(p.grad.abs().sum().item() for p in model.backbone.parameters() if p.grad is not None)


def test_official_pairing_detaches_the_end_task_view() -> None:
    model, end, aux = make_model(simclr={"pairing": "official"}), make_batch(6), make_batch(4, seed=2)
    out = model(end.x)
    loss, passes = model.objectives["simclr"].loss(model, aux, out)  # 6 vs 4 rows: truncated to 4
    assert len(passes) == 1 and passes[0].tokens.shape[0] == 4
    (grad_end,) = torch.autograd.grad(loss, out.pooled, retain_graph=True, allow_unused=True)
    assert grad_end is None  # nothing flows back into the end-task pass through view 1
    loss.backward()
    assert _backbone_grad(model) > 0  # through view 2
    assert model.objectives["simclr"].projection[0].weight.grad is not None


def test_two_views_trains_the_backbone() -> None:
    model, aux = make_model(), make_batch(4)
    loss, passes = model.objectives["simclr"].loss(model, aux, model(aux.x))
    assert len(passes) == 2 and all(p.tokens.shape == (4, 65, 64) for p in passes)
    assert not torch.equal(passes[0].pooled, passes[1].pooled)  # two different augmentations
    loss.backward()
    assert _backbone_grad(model) > 0


def test_l1_sees_every_auxiliary_pass() -> None:
    model = make_model(l1=True)
    algo = MTL1(model, NoHParams(), TrainHParams(), INFO, total_steps=4)
    metrics = algo.update(make_batch(4), make_batch(4, seed=2))
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(any(k.endswith(name) for k in metrics) for name in ("mim", "simclr", "l1"))
    assert set(model.objectives["l1"].normalizers) == {"end", "mim/0", "simclr/0", "simclr/1"}
    assert model.objectives["l1"].normalizers["mim/0"] == 4 * 65 * 64


def test_l1_counts_each_auxiliary_task_once() -> None:
    # Eq. 1: w_reg (|h_end| + |h_aux|). SimCLR's two views are one auxiliary task: their mean, not their sum.
    from robustbench_mtl.types import Outputs

    l1 = make_model(l1=True).objectives["l1"]
    h = {k: torch.full((2, 3, 4), v) for k, v in {"end": 1.0, "simclr/0": 2.0, "simclr/1": 4.0, "mim/0": 8.0}.items()}
    reps = {k: Outputs(pooled=t[:, 0], tokens=t) for k, t in h.items()}
    assert l1.loss(reps).item() == pytest.approx(1.0 + (2.0 + 4.0) / 2 + 8.0)
    assert l1.loss({k: reps[k] for k in ("end", "simclr/0", "simclr/1")}).item() == pytest.approx(1.0 + 3.0)


def test_config_errors() -> None:
    mlp = BACKBONES.get("mlp")
    mim, simclr = OBJECTIVES.get("mim"), OBJECTIVES.get("simclr")
    with pytest.raises(ConfigError, match="masking"):
        mim.check("mim", "mlp", mlp, INFO)
    tabular = DataInfo("tab", "tabular", (10,), {"y": 2}, (), ())
    with pytest.raises(ConfigError):
        simclr.check("simclr", "mlp", mlp, tabular)
    vit = BACKBONES.get("vit_tiny")
    mim.check("mim", "vit_tiny", vit, INFO)  # fits
    with pytest.raises(ConfigError, match="square"):
        vit(vit.HParams(), DataInfo("r", "image", (3, 32, 30), {"y": 2}, (), ()))
    with pytest.raises(ConfigError, match="patch_size"):
        vit(vit.HParams(patch_size=5), INFO)
    backbone = vit(vit.HParams(), INFO)
    for bad in (6, 12):  # not a multiple of 4; does not divide 32
        with pytest.raises(ConfigError, match="mask_patch_size"):
            mim(mim.HParams(mask_patch_size=bad), backbone, INFO)


def test_state_dict_round_trip() -> None:
    model, other = make_model(seed=0), make_model(seed=1)
    model.eval(), other.eval()
    x = make_batch(2).x
    with torch.no_grad():  # different seeds, different weights: the load below is what makes them equal
        assert not torch.allclose(model(x).tokens, other(x).tokens)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.equal(model(x).tokens, other(x).tokens)
        assert torch.equal(model.objectives["mim"].reconstruct(model(x).tokens),
                           other.objectives["mim"].reconstruct(other(x).tokens))


@pytest.mark.parametrize("name,pairing", [("mim", "two_views"), ("simclr", "two_views"), ("simclr", "official")])
def test_losses_are_deterministic_under_a_seed(name: str, pairing: str) -> None:
    model, batch = make_model(simclr={"pairing": pairing}), make_batch(4)
    values = []
    for _ in range(2):
        torch.manual_seed(0)
        values.append(model.objectives[name].loss(model, batch, model(batch.x))[0])
    assert torch.equal(values[0], values[1])
    torch.manual_seed(1)
    assert not torch.equal(values[0], model.objectives[name].loss(model, batch, model(batch.x))[0])


def test_imports_stay_light() -> None:
    code = ("import sys, robustbench_mtl.backbones.vit_tiny, robustbench_mtl.objectives.mim, "
            "robustbench_mtl.objectives.simclr; print('transformers' in sys.modules, 'kornia' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]

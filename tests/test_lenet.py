"""The lenet backbone: the MT-CRL reconstruction's trunk, a flatten size from the input shape, the conformance kit."""
from __future__ import annotations

import pytest
import torch

from robustbench_mtl.backbones.lenet import LeNet, LeNetHParams, pooled_side
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.testing import check_backbone


def info(shape: tuple[int, ...], modality: str = "image") -> DataInfo:
    return DataInfo("d", modality, shape, {"left": 10, "right": 10}, ("agree", "disagree"),  # type: ignore[arg-type]
                    (1, 1))


def test_conformance() -> None:
    check_backbone("lenet")
    check_backbone("lenet", final_relu=False, dropout=0.0, rep_dim=16)


@pytest.mark.parametrize("shape, flat", [((1, 28, 56), 20 * 4 * 11), ((1, 28, 28), 320), ((3, 32, 32), 500),
                                         ((1, 16, 16), 20)])
def test_flatten_size_follows_the_input(shape: tuple[int, int, int], flat: int) -> None:
    net = LeNet(LeNetHParams(), info(shape))
    assert net.fc.in_features == flat and net.features[0].in_channels == shape[0]
    out = net(torch.rand(4, *shape))
    assert out.pooled.shape == (4, 50) and out.tokens is None and net.out_dim == 50


def test_layers_are_the_recon_trunk() -> None:
    net = LeNet(LeNetHParams(), info((1, 28, 56)))
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "Dropout2d", "MaxPool2d", "ReLU", "Flatten"]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in (net.features[0], net.features[3])] == [
        (1, 10, (5, 5)), (10, 20, (5, 5))]
    assert net.features[4].p == 0.5 and isinstance(net.act, torch.nn.ReLU)
    assert pooled_side(28) == 4 and pooled_side(56) == 11


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net, x = LeNet(LeNetHParams(), info((1, 28, 56))), torch.rand(8, 1, 28, 56)
    net.eval()
    assert torch.equal(net(x).pooled, net(x).pooled)
    net.train()
    assert not torch.equal(net(x).pooled, net(x).pooled)
    assert bool((net(x).pooled >= 0).all())  # final ReLU
    plain = LeNet(LeNetHParams(final_relu=False), info((1, 28, 56))).eval()
    assert bool((plain(x).pooled < 0).any())


@pytest.mark.parametrize("shape", [(1, 15, 56), (28, 56), (1, 28, 12)])
def test_unreadable_shapes_are_one_line(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"backbone 'lenet' needs images shaped \(C, H, W\) with H, W >= 16"):
        LeNet.check("lenet", info(shape))


def test_tabular_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="backbone 'lenet' reads image inputs but dataset 'd' is tabular"):
        LeNet.check("lenet", info((1, 28, 28), "tabular"))

"""torchvision ResNet-50 (ImageNet weights by default) for image datasets; no patch masking."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import hp
from ..registry import BACKBONES
from ..types import Outputs
from .base import Backbone

# torchvision's ImageNet statistics (ResNet50_Weights.IMAGENET1K_V2.transforms())
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WEIGHTS = "IMAGENET1K_V2"


@dataclass(frozen=True)
class ResNet50HParams:
    pretrained: bool = hp(True, help=f"load torchvision's ResNet50_Weights.{WEIGHTS} (from torch's hub cache, "
                                     f"downloaded there if missing); false: random init")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from (after the weights "
                            "above); '' = none")


@BACKBONES.register("resnet50")
class ResNet50(Backbone):
    """torchvision ResNet-50, ImageNet-pretrained by default; pooled = 2048-d average pool, tokens = layer4 map.

    Reference: He et al. 2016 (ResNet); `torchvision.models.resnet50` with ResNet50_Weights.IMAGENET1K_V2
    (docs/methods.md#resnet50). Inputs in [0, 1] are normalised with ImageNet mean/std (grayscale images are
    repeated over 3 channels). pooled = the 2048-d output of avgpool (the fc layer is dropped); tokens = the
    layer4 feature map [B, 2048, h, w] flattened to [B, h*w, 2048], which the L1 penalty's `all_tokens` reads.
    Any image size works (layer4 is 1/32 of it). Weights come from torch's hub cache ($TORCH_HOME/hub/
    checkpoints); without network and without them there, one error line names the file and how to fetch it.
    No patch masking, so `mim` refuses it.
    """

    HParams = ResNet50HParams
    modalities = ("image",)
    has_tokens = True

    def __init__(self, hparams: ResNet50HParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        if len(info.input_shape) != 3 or info.input_shape[0] not in (1, 3):
            raise ConfigError(f"backbone 'resnet50' needs RGB or grayscale images shaped (C, H, W); dataset "
                              f"'{info.name}' has inputs shaped {tuple(info.input_shape)}")
        from torchvision.models import resnet50  # heavy import: keep `robustbench-mtl list` fast

        self.net = resnet50(weights=None)
        if hparams.pretrained:
            self.net.load_state_dict(self._pretrained_state())
        self.net.fc = torch.nn.Identity()  # type: ignore[assignment]  # not used: forward stops at avgpool
        self.out_dim = 2048
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _pretrained_state() -> dict[str, Tensor]:
        """torchvision's IMAGENET1K_V2 state dict, read from (or downloaded into) torch's hub cache."""
        import os

        from torchvision.models import ResNet50_Weights

        url = ResNet50_Weights[WEIGHTS].url
        name = os.path.basename(url)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
        if not os.path.exists(path):  # where torchvision's resnet50(weights=...) caches it, fetched the same way
            match = torch.hub.HASH_REGEX.search(name)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=False)
            except (OSError, RuntimeError) as exc:  # no network (URLError), unwritable cache, bad hash
                reason = " ".join(str(exc).split())[:120]
                raise ConfigError(
                    f"backbone 'resnet50': torchvision weights ResNet50_Weights.{WEIGHTS} are not in {path} and "
                    f"could not be downloaded ({reason}); fetch them where there is network with `curl -L {url} "
                    f"-o {path}` (TORCH_HOME moves the cache), or set backbone.pretrained=false") from None
        return torch.load(path, map_location="cpu", weights_only=True)

    def normalize(self, x: Tensor) -> Tensor:
        """What the network reads: ImageNet-normalised RGB (grayscale repeated over 3 channels)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(self.normalize(x)))))
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(h))))
        return Outputs(pooled=n.avgpool(fmap).flatten(1), tokens=fmap.flatten(2).transpose(1, 2))

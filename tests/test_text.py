"""Text: MLM masking statistics, the CLM loss by hand, overlapping-group metrics, token stores, toycomments."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.metrics import split_metrics
from robustbench_mtl.objectives.mlm import mask_tokens
from robustbench_mtl.runner import build, run
from robustbench_mtl.testing import TINY_BERT
from robustbench_mtl.types import Batch

TINY = tuple(f"backbone.{k}={v}" for k, v in TINY_BERT.items() if k != "vocab_size")


def test_mlm_masking_statistics() -> None:
    torch.manual_seed(0)
    special = torch.tensor([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK]
    ids = torch.randint(5, 1000, (400, 128))
    ids[:, 0], ids[:, -1], ids[:, 100:110] = 2, 3, 0
    corrupted, labels = mask_tokens(ids, 0.15, special, mask_id=4, vocab=1000)
    chosen = labels != -100
    eligible = ~torch.isin(ids, special)
    assert not bool(chosen[~eligible].any())  # [CLS], [SEP], [PAD] never selected
    assert abs(float(chosen.sum() / eligible.sum()) - 0.15) < 0.005
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (corrupted == 4) & chosen
    same = (corrupted == ids) & chosen
    other = chosen & ~masked & ~same
    n = float(chosen.sum())
    assert abs(float(masked.sum()) / n - 0.8) < 0.01
    assert abs(float(other.sum()) / n - 0.1) < 0.01 and abs(float(same.sum()) / n - 0.1) < 0.012
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def _batch(ids: torch.Tensor) -> Batch:
    hidden = torch.full((len(ids),), -1)
    return Batch(ids, {}, hidden, hidden.clone(), torch.arange(len(ids)))


def test_clm_loss_is_next_token_cross_entropy_by_hand(tmp_path: Path) -> None:
    r = resolve(RunSpec("toycomments", "mt", aux=("clm",), overrides=TINY))
    algo = build(r, torch.device("cpu"), 1)
    clm = algo.model.objectives["clm"]
    pad = clm.pad_id
    ids = torch.tensor([[2, 10, 11, 12, 3, pad, pad], [2, 13, 3, pad, pad, pad, pad]])
    torch.manual_seed(0)
    loss, (out,) = clm.loss(algo.model, _batch(ids), None)
    scores = clm.head(out.tokens).detach()
    hand, count = 0.0, 0
    for b in range(2):
        for t in range(6):
            target = int(ids[b, t + 1])
            if target == pad:
                continue
            hand += float(F.cross_entropy(scores[b, t][None], torch.tensor([target])))
            count += 1
    assert loss.item() == pytest.approx(hand / count, rel=1e-5)
    changed = ids.clone()
    changed[0, 4] = 20  # a later token must not change the earlier positions' states (causal pass)
    algo.model.eval()
    assert torch.allclose(algo.model(ids, heads=False, causal=True).tokens[0, :4],
                          algo.model(changed, heads=False, causal=True).tokens[0, :4], atol=1e-5)


def test_overlapping_group_metrics_by_hand() -> None:
    info = DataInfo("d", "text", (8,), {"y": 2}, ("a", "b"), (1, 1), eval_group_names=("g0", "g1", "g2"),
                    train_eval_group_counts=(10, 30, 60))
    y = torch.tensor([0, 1, 1, 0, 1])
    pred = torch.tensor([0, 0, 1, 1, 1])  # correct: 1 0 1 0 1
    members = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool)
    m = split_metrics("test", {"y": pred}, {"y": y}, torch.zeros(5, dtype=torch.long), info, None, members)
    # g0 = rows 0, 2: 2/2; g1 = rows 0, 1, 4: 2/3; g2 = rows 2, 4: 2/2; row 3 is in no group
    assert m["test/group_acc@g0"] == 1.0 and m["test/group_acc@g1"] == pytest.approx(2 / 3)
    assert m["test/worst_group_acc"] == pytest.approx(2 / 3)
    assert m["test/avg_acc"] == pytest.approx(3 / 5)  # each example once, row 3 included
    assert m["test/avg_acc_duplicated"] == pytest.approx(6 / 7)  # (example, group) rows, as the released code
    assert m["test/adjusted_acc"] == pytest.approx((10 * 1 + 30 * 2 / 3 + 60 * 1) / 100)


def test_token_batches_are_trimmed_to_their_longest_row() -> None:
    r = resolve(RunSpec("toycomments", "erm", overrides=TINY))
    train = r.dataset.load()["train"]
    assert train.x.dtype == torch.int32 and train.x.shape[1] == 48
    idx = torch.arange(16)
    batch = train.batch(idx)
    longest = int(train.lengths[idx].max())
    assert batch.x.dtype == torch.long and batch.x.shape == (16, longest) and longest < 48
    assert torch.equal(batch.x, train.x[idx, :longest].long())


def test_toycomments_groups_and_spurious_cue() -> None:
    r = resolve(RunSpec("toycomments", "erm", overrides=TINY))
    splits = r.dataset.load()
    info = r.info
    assert len(info.eval_group_names) == 16 and info.group_names[3] == "toxic_identity"
    train, test = splits["train"], splits["test"]
    identity = train.g % 2 == 1
    toxic = train.y["y"] == 1
    assert float(identity[toxic].float().mean()) > 0.75 > 0.25 > float(identity[~toxic].float().mean())
    test_identity = test.groups.view(len(test), 8, 2).any(-1).any(-1)
    assert abs(float(test_identity[test.y["y"] == 1].float().mean()) - 0.5) < 0.1
    assert bool((test.groups.sum(1) <= 2).all()) and bool((test.groups.sum(1) == 2).any())  # overlapping


@pytest.mark.slow
def test_toycomments_demo_runs_with_mlm_and_clm(tmp_path: Path) -> None:
    for aux in ("mlm", "clm"):
        out = run(RunSpec("toycomments", "mt_l1", aux=(aux,), overrides=("train.epochs=1", *TINY)),
                  tmp_path / aux).out_dir
        config = json.loads((out / "config.json").read_text())
        assert config["backbone"] == "bert_tiny" and config["objectives"] == [aux, "l1"]
        assert "new" in config["notes"][f"objective:{aux}"]["head"]
        counts = config["data"]["train_eval_group_counts"]
        assert len(counts) == len(config["data"]["eval_group_names"]) == 16 and sum(counts) > 0
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert f"train/loss_{aux}" in record and "val/avg_acc_duplicated" in record
        assert "val/group_acc@toxic_muslim" in record


def test_text_objectives_and_backbones_refuse_the_wrong_modality(tmp_path: Path) -> None:
    from robustbench_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="objective 'mlm' needs text inputs, but dataset 'toybirds' is image"):
        resolve(RunSpec("toybirds", "mt", aux=("mlm",)))
    with pytest.raises(ConfigError, match="objective 'mim' needs image inputs.*dataset 'toycomments' is text"):
        resolve(RunSpec("toycomments", "mt", aux=("mim",), overrides=TINY))
    with pytest.raises(ConfigError, match="backbone 'vit_tiny' reads image inputs but dataset 'toycomments' is text"):
        resolve(RunSpec("toycomments", "erm", backbone="vit_tiny"))


def test_mlm_and_clm_refuse_a_text_backbone_without_a_head_at_resolve_time() -> None:
    from robustbench_mtl.backbones.base import Backbone
    from robustbench_mtl.errors import ConfigError
    from robustbench_mtl.registry import OBJECTIVES

    class PlainText(Backbone):  # reads text, returns tokens, but has no MLM head and no causal mode
        modalities, has_tokens = ("text",), True

    info = DataInfo("toycomments", "text", (16,), {"y": 2}, ("g",), (1,))
    for name, what in (("mlm", "with an MLM head"), ("clm", "that can attend causally")):
        with pytest.raises(ConfigError, match=f"objective '{name}' needs a BERT-family backbone {what}, and "
                                              f"'plain' is not one"):
            OBJECTIVES.get(name).check(name, "plain", PlainText, info)

    class HeadOnly(PlainText):
        def mlm_head(self):  # noqa: ANN201 - a stand-in
            raise AssertionError("not called by check")

    OBJECTIVES.get("mlm").check("mlm", "head_only", HeadOnly, info)  # an MLM head is all mlm needs
    with pytest.raises(ConfigError, match="'clm' needs a BERT-family backbone that can attend causally"):
        OBJECTIVES.get("clm").check("clm", "head_only", HeadOnly, info)

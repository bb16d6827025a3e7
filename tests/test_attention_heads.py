"""Head types from constructed attention maps, and head removal through a derived checkpoint."""
import torch

from analysis.attention_heads import ablated_checkpoint, ablation_sets, classify
from analysis.attention_stats import stats_rows
from pretrain import run_pretraining
from pretrain.config import RECIPES, with_overrides
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import read_meta
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

T = 60


def maps() -> torch.Tensor:
    """(1, 4 heads, T, T): diagonal (+-1 frame), vertical (keys 10 and 40), uniform, and a 20-frame band (mixed)."""
    i = torch.arange(T)
    dist = (i[:, None] - i[None, :]).abs()
    diag = (dist <= 1).float()
    vert = torch.zeros(T, T)
    vert[:, [10, 40]] = 1
    vert += 0.002
    uniform = torch.ones(T, T)
    band = (dist <= 10).float()
    w = torch.stack([diag, vert, uniform, band])
    return (w / w.sum(-1, keepdim=True))[None]


def test_constructed_maps_get_their_types():
    rows = stats_rows("m", ["u"], [maps()], torch.tensor([T]), local_frames=2)
    import pandas as pd

    heads = classify(pd.DataFrame(rows))
    assert heads["type"].tolist() == ["diagonal", "vertical", "global", "mixed"]
    assert heads.loc[2, "entropy_ratio"] > 0.99 and heads.loc[1, "vertical_share"] > 0.9


def test_ablated_checkpoint_unrolls_shared_layers_exactly_and_removes_one_head(tmp_path):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=6, seconds=(1.4, 1.8))
    tiny = EncoderConfig(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=3)
    cfg = with_overrides(RECIPES["preln_stack3"], steps=2, batch_size=3, crop_frames=30, min_frames=10,
                         eval_interval=2, ckpt_interval=2, precision="float32")
    src = run_pretraining("aalbert:small", corpus, tmp_path / "src", cfg, device="cpu", encoder=tiny,
                          show_progress=False)
    wav, n = torch.randn(1, 24000), torch.tensor([24000])
    ref, _ = load_upstream(src).eval()(wav, n)
    same = ablated_checkpoint(src, [], tmp_path / "unrolled", "nothing removed")
    assert read_meta(same)["encoder"]["share_layers"] is False
    got, _ = load_upstream(same).eval()(wav, n)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    cut = ablated_checkpoint(src, [(2, 1)], tmp_path / "cut", "layer 2 head 1")
    got, _ = load_upstream(cut).eval()(wav, n)
    torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-6)  # below the removed head: unchanged
    assert (got[2] - ref[2]).abs().max() > 1e-4  # at its layer: changed
    assert read_meta(cut)["ablation"]["removed_heads"] == [[2, 1]]


def test_control_removes_as_many_non_global_heads():
    import pandas as pd

    heads = pd.DataFrame({"model": ["m"] * 6, "layer": [1, 1, 2, 2, 3, 3], "head": [0, 1, 0, 1, 0, 1],
                          "type": ["global", "diagonal", "global", "mixed", "vertical", "diagonal"]})
    sets = ablation_sets(heads, "m", seed=0)
    assert sets["no_global"] == [(1, 0), (2, 0)]
    assert len(sets["no_random"]) == 2 and not set(sets["no_random"]) & set(sets["no_global"])

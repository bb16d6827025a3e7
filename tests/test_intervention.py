"""analysis.intervention: two finished checkpoints that differ in one recipe field, compared cell by cell."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from analysis.intervention import compare, main, markdown, plot, recipe_difference, references
from benchmark.record.aggregate import validate_runs
from pretrain import run_pretraining
from tests.fixtures import make_pretrain_corpus
from tests.report_synthetic import synthetic_runs
from tests.test_pretrain_recipes import TINY, tiny
from upstream.checkpoint import META_FILE


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("intervention")
    corpus = make_pretrain_corpus(root / "corpus", n_utts=8, seconds=(1.4, 2.0))
    out = {}
    for name, cfg in (("base", tiny("preln_stack3")), ("unmasked", tiny("preln_stack3", unmasked_weight=0.5)),
                      ("longer", replace(tiny("preln_stack3"), steps=7))):
        out[name] = run_pretraining("aalbert:small", corpus, root / name, cfg, device="cpu", encoder=TINY,
                                    show_progress=False)
    out["stopped"] = run_pretraining("aalbert:small", corpus, root / "stopped", tiny("preln_stack3", seed=3),
                                     device="cpu", encoder=TINY, stop_at_step=2, show_progress=False)
    return out


def test_the_recipe_difference_is_named_and_mismatches_are_refused(pair):
    assert recipe_difference(pair["base"], pair["unmasked"], "aalbert") == {"unmasked_weight": (0.0, 0.5)}
    with pytest.raises(ValueError, match="differ in step: compare one recipe change"):
        recipe_difference(pair["base"], pair["longer"], "aalbert")
    with pytest.raises(ValueError, match="pretrained with the same recipe"):
        recipe_difference(pair["base"], pair["base"], "aalbert")
    with pytest.raises(ValueError, match="stopped at step 2; finish it"):
        recipe_difference(pair["base"], pair["stopped"], "aalbert")
    with pytest.raises(ValueError, match="holds aalbert, expected mockingjay"):
        recipe_difference(pair["base"], pair["unmasked"], "mockingjay")


def test_statistics_rounded_differently_are_the_same_corpus_others_are_not(pair, tmp_path):
    def with_stats(name: str, factor: float) -> Path:
        d = tmp_path / name
        shutil.copytree(pair["unmasked"], d)
        meta = json.loads((d / META_FILE).read_text())
        meta["feature"]["norm_mean"] = [v * factor for v in meta["feature"]["norm_mean"]]
        (d / META_FILE).write_text(json.dumps(meta))
        return d

    assert recipe_difference(pair["base"], with_stats("rounded", 1 + 3e-5), "aalbert") == {"unmasked_weight": (0.0, 0.5)}
    with pytest.raises(ValueError, match=r"different corpus statistics \(relative difference 1.0e-02\)"):
        recipe_difference(pair["base"], with_stats("other", 1.01), "aalbert")


def test_cells_are_paired_by_task_fraction_mode_and_layer(tmp_path):
    rows = validate_runs(synthetic_runs(upstreams=("mel", "aalbert"), tasks=("speaker_utterance",),
                                        fractions=(0.5, 1.0), seeds=(0, 1, 2)))
    rows = rows[rows["mode"] != "finetune"]
    al = rows[rows["upstream"] == "aalbert"]
    base = al.assign(ckpt_hash="b" * 16, test_metric=0.40 + 0.001 * al["seed"])
    inter = al.assign(ckpt_hash="i" * 16, test_metric=0.50 + 0.001 * al["seed"])
    inter.loc[inter["mode"] == "layer", "test_metric"] = 0.40 + 0.002 * inter["seed"]
    runs = pd.concat([rows[rows["upstream"] == "mel"], base, inter])
    table = compare(runs, {"baseline": "b" * 16, "intervention": "i" * 16}, tmp_path)
    layer = table[table["mode"] == "layer"]
    assert len(layer) == 4 and (layer["fraction"] == 1.0).all() and sorted(layer["layer"]) == [0, 1, 2, 3]
    other = table[table["mode"] != "layer"]
    assert other["gap"].round(6).eq(10.0).all()  # points: 50 % vs 40 %
    assert other["beyond_noise"].all()  # a 10-point gap, seeds 0.1 points apart, no outcomes: the seeds decide
    assert not layer["beyond_noise"].any()  # 0.1 point apart, inside the seeds' interval
    refs = references(runs, ("mel",))
    text = markdown(table, refs, {"unmasked_weight": (0.0, 0.5)}, {"baseline": 0.6, "intervention": None}, "cmd")
    assert "unmasked_weight 0.0 -> 0.5" in text and "baseline 0.600, intervention -" in text
    header, *cells = [ln for ln in text.splitlines() if ln.startswith("| speaker_utterance") or "mel:default" in ln]
    split = lambda line: [c.strip() for c in line.split("|")]  # noqa: E731
    col = split(header).index("mel:default")
    last = [split(c) for c in cells if " | last | " in c]
    assert last and all(c[col] != "-" for c in last)  # mel's only layer beside the last layer
    assert all(split(c)[col] == "-" for c in cells if " | weighted_sum | " in c)  # mel has no weighted sum
    assert plot(table, refs, tmp_path / "plot.png").stat().st_size > 10_000


def test_bad_arguments_stop_before_any_probe(pair, capsys, tmp_path):
    argv = ["--upstream", "aalbert:small", "--baseline", str(pair["base"]), "--out", str(tmp_path / "out")]
    for extra, expect in ((["--intervention", str(pair["base"])], "same recipe"),
                          (["--intervention", str(pair["unmasked"]), "--fractions", "0"], "outside (0, 1]"),
                          (["--intervention", str(pair["unmasked"]), "--tasks", "asr"], "unknown task(s) ['asr']"),
                          (["--intervention", "no/such/dir"], "no/such/dir")):
        assert main(argv + extra) == 2 and expect in capsys.readouterr().err, extra
    assert not (tmp_path / "out").exists()

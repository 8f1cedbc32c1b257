"""The result signature: every setting that changes a number is on the line."""

from __future__ import annotations

from evaluate.signature import result_signature, signature_line
from shared.config import load_config
from tests.conftest import DEMO_CONFIG


def test_scst_signature_names_every_setting() -> None:
    config = load_config(DEMO_CONFIG, ["scst.candidates=beam", "scst.n_samples=5",
                                       "scst.baseline=mean", "eval.split=val"])
    signature = result_signature(config, split_images=300, train_images=2400,
                                 chair_computed=True)
    assert signature.line() == (
        "train:xe+scst|cand:beam5|base:mean|eos:loss|norm:max_length|df:train(2400)|"
        "beam:5|maxlen:20|split:val(300)|refs:captions_demo.json|chair:original")
    payload = {"signature": signature.to_json()}
    assert signature_line(payload) == signature.line()
    assert payload["signature"]["eos_in_reward"] is False
    assert payload["signature"]["eos_in_loss"] is True


def test_xe_signature_without_chair_or_caption_files() -> None:
    config = load_config(DEMO_CONFIG, ["scst.enabled=false", "data.captions_json=[]",
                                       "eval.chair_vocabulary=extended", "eval.beam_size=3"])
    line = result_signature(config, 30, 200, chair_computed=False).line()
    assert line == "train:xe|beam:3|maxlen:20|split:test(30)|refs:karpathy-json|chair:not-computed"
    config = load_config(DEMO_CONFIG, ["eval.chair_vocabulary=extended",
                                       "scst.baseline=mean_others",
                                       "scst.loss_normalization=tokens",
                                       "scst.candidates=sample"])
    line = result_signature(config, 30, 200, chair_computed=True).line()
    assert "|base:mean_others|" in line and "|norm:tokens|" in line
    assert "|cand:sample5|" in line and line.endswith("|chair:extended")


def test_old_metrics_have_no_signature() -> None:
    assert signature_line({"metrics": {}}) == ""

"""s3prl Mockingjay/AALBERT model configs <-> our EncoderConfig / FeatureConfig, in both directions.

The s3prl side is the `Upstream_Config` (or legacy `Config`) dict of s3prl 0.4.18 checkpoints: a `transformer`
section read by `s3prl/upstream/mockingjay/model.py` (`TransformerConfig`), a `task` section
(`sequence_length`: inputs longer than this are encoded in independent chunks, 0 = never) and an `audio` section
read by `s3prl/upstream/baseline/preprocessor.py` (`OnlinePreprocessor`: wav scaled to `target_level` dBFS,
STFT with `n_freq` bins, `win_ms`/`hop_ms`, HTK mel, log(x + eps), `delta` time derivatives, optional
per-utterance `cmvn`). Layout as in s3prl's `pretrain/mockingjay/config_model_large.yaml`.
"""
from __future__ import annotations

from typing import Any

from upstream.features import FeatureConfig
from upstream.transformer import EncoderConfig

S3PRL_N_FFT = 400  # OnlinePreprocessor builds MelScale with torchaudio's default n_stft=201, i.e. n_fft 400
S3PRL_EPS = 1e-10  # OnlinePreprocessor's default eps (log floor, and the CMVN std offset)


def is_s3prl_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is an s3prl Mockingjay-family checkpoint: its `Transformer` weights, or a model config
    that `s3prl_model_config` reads."""
    return isinstance(obj, dict) and ("Transformer" in obj or any(
        isinstance(obj.get(k), dict) and "transformer" in obj[k] for k in ("Upstream_Config", "Config")))


def s3prl_model_config(ckpt: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """The upstream (model) config dict: `Upstream_Config` (since late 2021) or `Config` (older files)."""
    for key in ("Upstream_Config", "Config"):
        c = ckpt.get(key)
        if isinstance(c, dict) and "transformer" in c:
            return c
    raise ValueError(f"{where}: no model config (neither Upstream_Config nor Config holds a 'transformer' section)")


def _wrap(where: str, section: str, e: Exception) -> ValueError:
    msg = str(e)
    return ValueError(msg if msg.startswith(where) else f"{where}: bad {section} config ({type(e).__name__}: {msg})")


def encoder_config_from_s3prl(model_cfg: dict[str, Any], input_dim: int, where: str = "checkpoint") -> EncoderConfig:
    try:
        return _encoder_config(model_cfg, input_dim, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field missing or of the wrong type
        raise _wrap(where, "transformer", e) from None


def _encoder_config(model_cfg: dict[str, Any], input_dim: int, where: str) -> EncoderConfig:
    t = model_cfg["transformer"]
    if str(t.get("hidden_act", "gelu")) != "gelu":
        raise ValueError(f"{where}: hidden_act {t.get('hidden_act')!r} is not supported (only gelu)")
    try:
        return EncoderConfig(input_dim=input_dim, hidden_size=int(t["hidden_size"]),
                             num_layers=int(t["num_hidden_layers"]), num_heads=int(t["num_attention_heads"]),
                             intermediate_size=int(t["intermediate_size"]),
                             dropout=float(t.get("hidden_dropout_prob", 0.1)),
                             attention_dropout=float(t.get("attention_probs_dropout_prob", 0.1)),
                             layer_norm_eps=float(t.get("layer_norm_eps", 1e-12)),
                             initializer_range=float(t.get("initializer_range", 0.02)),
                             share_layers=bool(t.get("share_layer", False)),
                             pre_layer_norm=bool(t.get("pre_layer_norm", False)))
    except KeyError as e:
        raise ValueError(f"{where}: transformer config lacks {e}") from e


def feature_config_from_s3prl(model_cfg: dict[str, Any], input_dim: int, where: str = "checkpoint") -> FeatureConfig:
    """s3prl's on-the-fly log-mel settings; `cmvn` (on by default) becomes norm='utterance', off norm='none'."""
    try:
        return _feature_config(model_cfg, input_dim, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _wrap(where, "audio", e) from None


def _samples(ms: float, sample_rate: int) -> int:
    return round(float(ms) * sample_rate / 1000)  # as OnlinePreprocessor rounds win_ms / hop_ms


def _feature_config(model_cfg: dict[str, Any], input_dim: int, where: str) -> FeatureConfig:
    audio = model_cfg.get("audio") or {}
    if "kaldi" in audio:
        raise ValueError(f"{where}: the Kaldi fbank front-end (audio.kaldi) is not supported (only s3prl's log-mel)")
    inp = audio.get("input") or {}
    if inp.get("feat_type", "mel") != "mel" or not inp.get("log", True):
        raise ValueError(f"{where}: input features {inp.get('feat_type', 'mel')!r} with log={inp.get('log', True)} "
                         "are not supported (only log-mel)")
    delta = int(inp.get("delta", 0))
    downsample = int(model_cfg["transformer"].get("downsample_rate", 1))
    n_mels = int(audio.get("n_mels", input_dim // (downsample * (1 + delta))))
    sr = int(audio.get("sample_rate", 16000))
    feat = FeatureConfig(sample_rate=sr, n_fft=(int(audio.get("n_freq", 201)) - 1) * 2,
                         win_length=_samples(audio.get("win_ms", 25), sr), hop_length=_samples(audio.get("hop_ms", 10), sr),
                         n_mels=n_mels, log_floor=float(audio.get("eps", S3PRL_EPS)),
                         deltas=delta > 0, delta_order=max(delta, 1), downsample=downsample,
                         target_dbfs=float(audio["target_level"]) if "target_level" in audio else -25.0,
                         norm="utterance" if inp.get("cmvn", True) else "none")
    if feat.feature_dim != input_dim:
        raise ValueError(f"{where}: feature config gives {feat.feature_dim}-dim input, weights expect {input_dim}")
    return feat


def _ms(samples: int, sample_rate: int, what: str) -> float | int:
    ms = samples * 1000 / sample_rate
    if _samples(ms, sample_rate) != samples:
        raise ValueError(f"{what} of {samples} samples at {sample_rate} Hz is not a whole number of ms for s3prl")
    return int(ms) if float(ms).is_integer() else ms


def s3prl_upstream_config(enc: EncoderConfig, feat: FeatureConfig) -> dict[str, Any]:
    """The inverse of the two readers above: an `Upstream_Config` dict (plain data) for s3prl 0.4.18.

    `feat.norm` must be 'utterance' (s3prl's cmvn) or 'none'; corpus statistics have no s3prl field (the exporter
    folds them into the input projection first). `task.sequence_length` 0: s3prl encodes every input whole, as ours.
    """
    if enc.embed_dim is not None:
        raise ValueError("s3prl has no factorised input embedding (embed_dim): compose it into one projection first")
    if feat.norm == "corpus":
        raise ValueError("s3prl has no corpus normalisation: fold the statistics into the input projection first")
    if feat.target_dbfs is None:
        raise ValueError("s3prl always scales the waveform to a target level (audio.target_level); this front-end "
                         "keeps the raw level (target_dbfs None)")
    if feat.n_fft != S3PRL_N_FFT:
        raise ValueError(f"s3prl's front-end builds its mel filterbank for n_fft {S3PRL_N_FFT} (201 bins); "
                         f"this front-end uses n_fft {feat.n_fft}")
    sr = feat.sample_rate
    inp = {"feat_type": "mel", "channel": 0, "log": True, "delta": feat.delta_order if feat.deltas else 0,
           "cmvn": feat.norm == "utterance"}
    transformer = {"input_dim": -1,  # s3prl's marker for on-the-fly features (the width comes from the weights)
                   "hidden_size": enc.hidden_size, "num_hidden_layers": enc.num_layers,
                   "num_attention_heads": enc.num_heads, "intermediate_size": enc.intermediate_size,
                   "hidden_act": "gelu", "hidden_dropout_prob": enc.dropout,
                   "attention_probs_dropout_prob": enc.attention_dropout, "initializer_range": enc.initializer_range,
                   "layer_norm_eps": enc.layer_norm_eps, "share_layer": enc.share_layers,
                   "pre_layer_norm": enc.pre_layer_norm, "downsample_rate": feat.downsample}
    audio = {"sample_rate": sr, "target_level": feat.target_dbfs, "win_ms": _ms(feat.win_length, sr, "window"),
             "hop_ms": _ms(feat.hop_length, sr, "hop"), "n_freq": feat.n_fft // 2 + 1, "n_mels": feat.n_mels,
             "eps": feat.log_floor, "input": inp, "target": dict(inp)}
    return {"transformer": transformer, "task": {"loss": "L1", "sequence_length": 0}, "audio": audio}

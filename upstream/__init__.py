"""Upstream models behind one interface: waveforms in, every hidden state and valid frame lengths out."""

"""Inference: preprocessing, the Segmenter (geometry, three-plane fusion), quality checks and INT8."""

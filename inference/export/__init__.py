"""Pack builders: model files taken from pinned wheels, the onnx.helper test pack, and the CLIP export (torch)."""

"""The .cnz container: encode a compressed model, decode it bit for bit, verify it."""

from cnnzip.codec.cnz import (FORMAT, LayerRecord, decode_file, encode_file, round_for_storage,
                              layer_records)

__all__ = ["FORMAT", "LayerRecord", "decode_file", "encode_file", "layer_records",
           "round_for_storage"]

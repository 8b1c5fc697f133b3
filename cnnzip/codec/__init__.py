"""The .cnz container: encode a compressed model, decode it bit for bit, verify it."""

from cnnzip.codec.cnz import decode_file, encode_file, round_for_storage
from cnnzip.codec.records import FORMAT, LayerRecord, layer_records, quant_records

__all__ = ["FORMAT", "LayerRecord", "decode_file", "encode_file", "layer_records",
           "quant_records", "round_for_storage"]

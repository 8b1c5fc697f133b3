"""Files: the .cnz container (encode a compressed model, decode it bit for bit, verify it) and
training checkpoints."""

from cnnzip.codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnnzip.codec.cnz import decode_file, encode_file, round_for_storage
from cnnzip.codec.records import FORMAT, CodebookRecord, Coding, codebook_records, quant_records

__all__ = ["Checkpoint", "CodebookRecord", "Coding", "FORMAT", "codebook_records", "decode_file",
           "encode_file", "load_checkpoint", "quant_records", "round_for_storage",
           "save_checkpoint"]

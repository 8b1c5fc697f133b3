"""The TensorFlow Lite backend: int8 ``.tflite`` flatbuffers that TensorFlow Lite Micro runs with
the integers of cnnzip's integer reference (:mod:`cnnzip.export.tflite.writer`)."""

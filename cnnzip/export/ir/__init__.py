"""Lowering: a PyTorch model to cnnzip's integer IR (:mod:`.ops`, :func:`.lower.lower_model`)
or its float IR (:func:`.lower_float.lower_float_model`), the numpy programs every backend
writes and checks against."""

"""The FPGA backend: hls4ml projects from the integer IR (:mod:`.project`, through the
PyTorch shell of :mod:`.shell`), the DSP48E2 packing model (:mod:`.dsp`) and the resource
estimate (:mod:`.resources`)."""

"""Pure tensor and array math: masks, clustering, index and entropy coding."""

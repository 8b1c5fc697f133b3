"""What more than one step uses and no step is: channel and bit allocation (`allocation`), the
policy searches over per-layer ratios and bits (`policy`, with AMC's `ddpg` agent), feature-map
calibration (`calibration`), channel importance (`channel_scores`)."""

"""Tracing and coupled-channel groups, on Torch-Pruning's dependency graph."""

from cnnzip.graph.groups import ChannelGroup, Member, channel_groups
from cnnzip.models.channels import trace

__all__ = ["ChannelGroup", "Member", "channel_groups", "trace"]

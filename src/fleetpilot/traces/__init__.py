"""Loaders for public traces: file formats in, :mod:`fleetpilot.core` values out.

All I/O for traces lives here; what the loaders return is pure data for the simulator and the
policies: request logs as ``tuple[TraceRequest, ...]``, rate series as
:class:`~fleetpilot.core.series.RateSeries`, spot markets as
:class:`~fleetpilot.core.series.SpotMarket`.  Bad input raises
:class:`~fleetpilot.errors.ConfigError` naming the file, the line and what was expected.

=====================  ==============================================  ====================
loader                 format                                          returns
=====================  ==============================================  ====================
load_azure             Azure LLM inference CSV (2023/2024)             TraceRequest tuple
load_mooncake          Mooncake FAST'25 JSONL                          TraceRequest tuple
load_burstgpt          BurstGPT CSV                                    TraceRequest tuple
load_servegen          Alibaba ServeGen model folder / trace CSV       RateSeries
load_minute_counts     per-minute counts (SpotHedge/MAF)               RateSeries
load_spot_market       SkyPilot / SpotHedge spot JSON                  SpotMarket
load_spot_map          spot map YAML: which trace describes what       SpotMap
load_trace             any of the first five, chosen from the file     either
=====================  ==============================================  ====================
"""

from fleetpilot.traces._files import DEFAULT_MEAN_OUTPUT_TOKENS, DEFAULT_MEAN_PROMPT_TOKENS
from fleetpilot.traces.counts import load_minute_counts
from fleetpilot.traces.dispatch import NAMED_TRACES, load_trace, resolve_trace, trace_format
from fleetpilot.traces.requests import load_azure, load_burstgpt, load_mooncake
from fleetpilot.traces.servegen import load_servegen
from fleetpilot.traces.spot import SpotFeed, SpotMap, load_spot_map, load_spot_market

__all__ = [
    "DEFAULT_MEAN_OUTPUT_TOKENS",
    "DEFAULT_MEAN_PROMPT_TOKENS",
    "NAMED_TRACES",
    "SpotFeed",
    "SpotMap",
    "load_azure",
    "load_burstgpt",
    "load_minute_counts",
    "load_mooncake",
    "load_servegen",
    "load_spot_map",
    "load_spot_market",
    "load_trace",
    "resolve_trace",
    "trace_format",
]

"""fleetpilot: cost- and latency-aware orchestration for production LLM inference."""

__version__ = "0.1.0"

"""DeepIoT compression (docs/design.md §2): the compressor-critic search, then slicing and fine-tuning.

Parts, in the order they are used:
- `config`: the settings of a run (`CompressionConfig`: loop, compressor, critic, schedule, finetune);
- `compressor`: the LSTM compressor that reads weight matrices and emits keep probabilities;
- `reward`: the critic's judgement of a sampled structure (reward, resource costs, REINFORCE baselines);
- `schedules` and `budget`: the threshold τ over time, and the prices that hold a run to its budgets;
- `step`: one iteration, reading like the paper's Algorithm 1;
- `loop`: the phases compress → finetune, evaluations, stop rules, the result;
- `state`: the saved loop state a rerun resumes from.
"""

from __future__ import annotations

from deepiot.compression.compressor import CompressorConfig
from deepiot.compression.config import CompressionConfig, LoopConfig
from deepiot.compression.loop import CompressionResult, compress_model, scratch_alternative, slice_checked
from deepiot.compression.reward import CriticConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.compression.state import STATE_FILE

__all__ = [
    "STATE_FILE",
    "CompressionConfig",
    "CompressionResult",
    "CompressorConfig",
    "CriticConfig",
    "LoopConfig",
    "ScheduleConfig",
    "compress_model",
    "scratch_alternative",
    "slice_checked",
]

"""`deepiot/Compress-v0`: a gymnasium environment in which any RL agent compresses a model (docs/design.md §3).

One episode compresses one model, AMC-style: one step per compressible group in forward order, the action
is the keep ratio of that group. At the last step the chosen structure is applied as hard masks, the
critic (the model) is fine-tuned under them and judged by the same `Reward` (−loss − λ·cost ratio) and cost
models the compressor-critic uses, so both searches are scored alike. `import deepiot` registers the id.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from deepiot.checkpoint import load_trained_model
from deepiot.checks import ModelCheckError, check_classifier
from deepiot.compression.reward import Reward
from deepiot.cost.registry import COST_FUNCTIONS
from deepiot.data import DatasetBundle, loaders_by_name
from deepiot.export import PLAN_NAME, ExportResult, export_model, manifest_entries
from deepiot.models import REFERENCE_MODELS, build_model
from deepiot.runtime import BatchStream, dataset_tensors, evaluate, resolve_device
from deepiot.structure import MaskedNetwork, SlicingPlan, Structure, slice_model

DATASETS = ("mnist", "hapt_activity", "hapt_user", "cifar10")  # loaders taking (root, limit)
KINDS = ("linear", "conv", "rnn")
OBSERVATION_FIELDS = (
    *(f"kind_{kind}" for kind in KINDS),
    "log_size",
    "position",
    "cost_share",
    "cost_ratio",
    "previous_keep",
    "remaining",
)
BATCH_SIZE = 64  # pre-training and fine-tuning batches
LEARNING_RATE = 1e-3  # Adam, pre-training and fine-tuning
PRETRAIN_STEPS = 300  # steps of the built-in pre-training (named models without a checkpoint)
PRETRAIN_SEED = 0  # the built-in pre-training is deterministic: same weights in every env instance
EVAL_BATCH_SIZE = 512


class CompressEnv(gym.Env[np.ndarray, np.ndarray]):
    """Compress a trained classifier one hidden-element group per step; reward the final structure.

    Spaces:
        action: Box(0, 1, (1,), float32), the keep ratio of the current group; an action outside [0, 1]
            (or not one finite number) raises ValueError. A ratio below min_keep is raised to it, and the
            group keeps max(1, round(ratio · size)) elements (rounded half up): the columns of
            `structure.weight_matrix` (fan-in weights plus bias of each element) with the largest L1 norm,
            ties to the lower index — the magnitude criterion AMC uses.
        observation: Box(0, 1, (9,), float32), fields in `OBSERVATION_FIELDS` order:
            current group — kind one-hot (linear, conv, rnn), log(1 + size) / log(1 + largest group size),
            index / number of groups, cost share (1 − cost with this group emptied / original cost);
            global — cost ratio of the structure so far (decided groups at their kept counts, later groups
            full), the previous group's kept fraction (1 at the first step), fraction of groups remaining.
            The observation after the last step has zeros for the current-group fields, position 1 and
            remaining 0.

    Reward: 0 on intermediate steps. At the last step the hard masks are applied through `MaskedNetwork`,
    the model is fine-tuned for `finetune_steps` Adam steps under them, evaluated on the first `eval_samples`
    validation samples, and the reward is the mean of `Reward(structure, cost, lam)`: −loss − λ·cost ratio.
    `info` then holds accuracy, loss, cost_ratio, kept_counts, params, macs (and their originals).
    Episodes end with terminated=True after one step per group, never truncated; each reset restores the
    original weights, so episodes are independent.

    Args:
        model: a name in `deepiot.models.REFERENCE_MODELS` (pre-trained inside the env for `PRETRAIN_STEPS` steps, once per
            process, deterministically), a trained `nn.Module` (copied, never modified), or None: the
            checkpoint's model, else "lenet300".
        data: a name in `DATASETS` (loaded with `data_root` and `data_limit` samples per split), a
            `DatasetBundle` (used as is, e.g. from `deepiot.data.load_npz`), or None: the checkpoint's
            dataset, else "mnist".
        cost: a cost model in `deepiot.cost.registry.COST_FUNCTIONS` ("params", "macs", ...).
        lam: weight λ ≥ 0 of the cost ratio in the reward.
        data_limit: samples per split taken from a named dataset.
        finetune_steps: fine-tuning steps under the final masks (0 judges the structure as cut).
        eval_samples: validation samples of the final evaluation (at most the split's size).
        min_keep: smallest keep ratio an action can ask for, in (0, 1].
        checkpoint: a deepiot "trained_model" checkpoint (model.pt) to compress instead of a named model.
        data_root: where a named dataset's files are (None: the offline copy, where one exists).
        render_mode: None or "ansi" (a text table of the kept elements).
        device: where the episode's model, data and fine-tuning live ("auto", "cpu", "cuda:1", ...; see
            `deepiot.runtime.resolve_device`). Batch orders are drawn on the CPU, so every device sees the same ones;
            the built-in pre-training of a named model runs on the CPU (once per process).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        model: str | nn.Module | None = None,
        data: str | DatasetBundle | None = None,
        cost: str = "params",
        lam: float = 1.0,
        data_limit: int = 2048,
        finetune_steps: int = 20,
        eval_samples: int = 1000,
        min_keep: float = 0.02,
        checkpoint: str | os.PathLike[str] | None = None,
        data_root: str | None = None,
        render_mode: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        check_arguments(
            model, data, cost, lam, data_limit, finetune_steps, eval_samples, min_keep, render_mode
        )
        self.render_mode = render_mode
        self.finetune_steps = finetune_steps
        self.min_keep = float(min_keep)
        self.device = resolve_device(device)
        self.model, self.model_config, self.bundle = build_episode_model(
            model, data, checkpoint, data_root, data_limit
        )
        self.model = self.model.to(self.device)
        self.train_inputs, self.train_labels = (
            tensor.to(self.device) for tensor in dataset_tensors(self.bundle.train, "train")
        )
        val_inputs, val_labels = (
            tensor.to(self.device) for tensor in dataset_tensors(self.bundle.val, "val")
        )
        self.eval_inputs, self.eval_labels = val_inputs[:eval_samples], val_labels[:eval_samples]
        self.example_inputs = self.train_inputs[:1]  # [1, *input_shape]
        classes = check_classifier(self.model, self.train_inputs, f"the {self.bundle.name!r} training inputs")
        if classes != self.bundle.num_classes:
            raise ModelCheckError(
                f"CompressEnv: {type(self.model).__name__} returns {classes} logits, but dataset "
                f"{self.bundle.name!r} has {self.bundle.num_classes} classes."
            )
        self.structure = Structure.from_model(self.model, self.example_inputs)
        if not self.structure.groups:
            raise ValueError(
                f"CompressEnv: {type(self.model).__name__} has no compressible group (Linear/Conv/LSTM/GRU/RNN "
                "hidden elements other than the output layer); there is nothing to compress."
            )
        self.network = MaskedNetwork(self.model, self.structure)
        self.reward_model = Reward(self.structure, cost, lam)
        self.original_state = copy.deepcopy(self.model.state_dict())
        self.original_accuracy = evaluate(
            self.network, self.eval_inputs, self.eval_labels, EVAL_BATCH_SIZE
        ).accuracy
        self.group_features = self._group_features()  # [G, 6]
        self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(OBSERVATION_FIELDS),), dtype=np.float32)
        self._kept: dict[str, list[int]] = {}
        self._previous_keep = 1.0
        self._final_info: dict[str, Any] = {}
        self._finished = False
        self._started = False
        self._generator = torch.Generator()

    # ------------------------------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Restore the original weights and start a new episode at the first group."""
        super().reset(seed=seed)
        self.model.load_state_dict(self.original_state)
        self._generator.manual_seed(int(self.np_random.integers(0, 2**63 - 1)))
        self._kept, self._previous_keep = {}, 1.0
        self._finished, self._started = False, True
        return self._observation(), {"group": self.structure.groups[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Keep a fraction `action` of the current group; at the last group fine-tune, evaluate and reward."""
        if not self._started or self._finished:
            raise RuntimeError(
                "CompressEnv.step: call reset() first (the episode has not started or has ended)."
            )
        keep_ratio = self._keep_ratio(action)
        group = self.structure.groups[len(self._kept)]
        count = max(1, math.floor(keep_ratio * group.size + 0.5))
        self._kept[group.name] = self.structure.largest_l1_elements(self.model, group.name, count)
        self._previous_keep = count / group.size
        info: dict[str, Any] = {"group": group.name, "keep_ratio": keep_ratio, "kept_count": count}
        terminated = len(self._kept) == len(self.structure.groups)
        reward = 0.0
        if terminated:
            reward, final_info = self._judge_structure()
            info.update(final_info)
            self._final_info, self._finished = final_info, True
        return self._observation(), reward, terminated, False, info

    def render(self) -> str | None:
        """In "ansi" mode, a table of every group's kept elements (groups not decided yet show "-")."""
        if self.render_mode is None:
            gym.logger.warn(
                "CompressEnv.render: render_mode is None; create the env with render_mode='ansi'."
            )
            return None
        lines = [f"{'group':<16} {'kind':<6} {'size':>6} {'kept':>6} {'kept %':>7}"]
        for group in self.structure.groups:
            kept = self._kept.get(group.name)
            count, share = (
                ("-", "-") if kept is None else (str(len(kept)), f"{100 * len(kept) / group.size:.1f}")
            )
            lines.append(f"{group.name:<16} {group.kind:<6} {group.size:>6} {count:>6} {share:>7}")
        lines.append(f"cost ratio so far: {self._cost_ratio_so_far():.4f}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------------- results of an episode

    def sliced_model(self) -> nn.Module:
        """The finished episode's structure as a physically smaller model (the path deepiot-compress takes)."""
        self._check_finished("sliced_model")
        return slice_model(self.model, self.structure, self._kept).eval()

    def slicing_plan(self) -> SlicingPlan:
        """Kept indices of the finished episode, with the model config and group sizes (portable JSON)."""
        self._check_finished("slicing_plan")
        return SlicingPlan(
            model_config=json.loads(json.dumps(self.model_config)),
            kept={name: list(indices) for name, indices in self._kept.items()},
            group_sizes=self.structure.group_sizes,
        )

    def export(self, out_dir: str | os.PathLike[str]) -> ExportResult:
        """Export the sliced model (TorchScript + ONNX, checked) with its slicing plan and a manifest."""
        plan = self.slicing_plan()
        with tempfile.TemporaryDirectory() as folder:
            plan.save(Path(folder) / PLAN_NAME)
            plan_bytes = (Path(folder) / PLAN_NAME).read_bytes()
        return export_model(  # intended: export runs on the host
            self.sliced_model().cpu(),
            self.example_inputs.cpu(),
            out_dir,
            manifest_extra=self._manifest_entries(),
            extra_files={PLAN_NAME: plan_bytes},
        )

    # ----------------------------------------------------------------------------------------------- helpers

    def _keep_ratio(self, action: np.ndarray) -> float:
        """The action as a keep ratio: one number in the action space [0, 1], raised to at least min_keep."""
        try:
            values = np.asarray(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            values = np.array([np.nan, np.nan])  # not numeric: reported below
        if values.size != 1 or not 0.0 <= values[0] <= 1.0:  # NaN fails the comparison too
            raise ValueError(
                f"CompressEnv.step: the action must be one finite keep ratio in the action space [0, 1] "
                f"(e.g. np.array([0.5], dtype=np.float32)), got {action!r}."
            )
        return float(max(values[0], self.min_keep))

    def _group_features(self) -> np.ndarray:
        """Per group: kind one-hot, normalised log size, position, cost share — [G, 6]."""
        groups = self.structure.groups
        largest = max(group.size for group in groups)
        features = np.zeros((len(groups), len(KINDS) + 3), dtype=np.float32)
        for index, group in enumerate(groups):
            emptied = self.reward_model.cost_ratio(
                {group.name: torch.zeros(1, group.size, device=self.device)}
            )  # [1]
            features[index, KINDS.index(group.kind)] = 1.0
            features[index, 3] = math.log1p(group.size) / math.log1p(largest)
            features[index, 4] = index / len(groups)
            features[index, 5] = float(1.0 - emptied[0])
        return np.clip(features, 0.0, 1.0)

    def _observation(self) -> np.ndarray:
        groups_left = len(self.structure.groups) - len(self._kept)
        current = (
            self.group_features[len(self._kept)] if groups_left else np.zeros(len(KINDS) + 3, np.float32)
        )
        if not groups_left:
            current[4] = 1.0  # position after the last group
        remaining = groups_left / len(self.structure.groups)
        global_fields = [self._cost_ratio_so_far(), self._previous_keep, remaining]
        observation = np.concatenate([current, np.asarray(global_fields, dtype=np.float32)])
        return np.clip(observation, 0.0, 1.0).astype(np.float32)

    def _cost_ratio_so_far(self) -> float:
        masks = {
            name: mask[None, :]
            for name, mask in self.structure.masks_from_kept(self._full_kept(), self.device).items()
        }
        return float(self.reward_model.cost_ratio(masks)[0])  # masks [1, size] → ratio [1]

    def _full_kept(self) -> dict[str, list[int]]:
        """Kept indices of every group: decided groups as chosen, later groups complete."""
        return {
            group.name: self._kept.get(group.name, list(range(group.size))) for group in self.structure.groups
        }

    def _judge_structure(self) -> tuple[float, dict[str, Any]]:
        """Fine-tune under the final hard masks, evaluate, and reward with the shared critic `Reward`."""
        masks = self.structure.masks_from_kept(self._kept, self.device)  # {group: [size]}
        self._finetune(masks)
        accuracy, _, losses = evaluate(
            self.network, self.eval_inputs, self.eval_labels, EVAL_BATCH_SIZE, masks
        )
        # each mask [size] → [N, size]: one (identical) structure per evaluated sample
        batch_masks = {name: mask.expand(len(losses), -1) for name, mask in masks.items()}
        judged = self.reward_model(losses, batch_masks)
        kept_counts = {name: len(indices) for name, indices in self._kept.items()}
        cost, original = self.structure.cost(kept_counts), self.structure.cost()
        info = {
            "accuracy": accuracy,
            "original_accuracy": self.original_accuracy,
            "loss": float(losses.mean()),
            "cost_ratio": float(judged.cost_ratio[0]),
            "kept_counts": kept_counts,
            "params": int(cost.params),
            "macs": int(cost.macs),
            "original_params": int(original.params),
            "original_macs": int(original.macs),
        }
        return float(judged.reward.mean()), info

    def _finetune(self, masks: Mapping[str, Tensor]) -> None:
        """`finetune_steps` Adam steps on training batches under the hard masks (batches from the episode seed)."""
        seed = int(torch.randint(2**62, (1,), generator=self._generator))
        batches = BatchStream(self.train_inputs, self.train_labels, BATCH_SIZE, seed)
        train_steps(self.network, batches, self.finetune_steps, masks)

    def _check_finished(self, what: str) -> None:
        if not self._finished:
            raise RuntimeError(
                f"CompressEnv.{what}: no finished episode; call it after the step that returns terminated=True "
                "and before the next reset()."
            )

    def _manifest_entries(self) -> dict[str, Any]:
        metrics = {
            "val_accuracy": self._final_info["accuracy"],
            "original_val_accuracy": self.original_accuracy,
            "eval_samples": len(self.eval_labels),
        }
        return manifest_entries(
            self.model_config, metrics, self.bundle.describe(), sliced=True, source="deepiot/Compress-v0"
        )


# ------------------------------------------------------------------------------------------- construction


def check_arguments(
    model: Any,
    data: Any,
    cost: str,
    lam: float,
    data_limit: int,
    finetune_steps: int,
    eval_samples: int,
    min_keep: float,
    render_mode: str | None,
) -> None:
    """Reject bad constructor arguments with a message naming the argument, before any data is loaded."""
    if isinstance(model, str) and model not in REFERENCE_MODELS:
        raise ValueError(
            f"CompressEnv: unknown model {model!r}; expected one of {sorted(REFERENCE_MODELS)} or an nn.Module."
        )
    if model is not None and not isinstance(model, str | nn.Module):
        raise TypeError(
            f"CompressEnv: model must be a name, an nn.Module or None, got {type(model).__name__}."
        )
    if isinstance(data, str) and data not in DATASETS:
        raise ValueError(
            f"CompressEnv: unknown data {data!r}; expected one of {list(DATASETS)} or a DatasetBundle."
        )
    if data is not None and not isinstance(data, str | DatasetBundle):
        raise TypeError(
            f"CompressEnv: data must be a name, a DatasetBundle or None, got {type(data).__name__}."
        )
    if cost not in COST_FUNCTIONS:
        raise ValueError(
            f"CompressEnv: unknown cost {cost!r}; registered cost functions: {sorted(COST_FUNCTIONS)}."
        )
    if not (isinstance(lam, int | float) and not isinstance(lam, bool) and lam >= 0):
        raise ValueError(
            f"CompressEnv: lam (weight of the cost ratio in the reward) must be >= 0 (a number), got {lam!r}."
        )
    for name, value, minimum in (("data_limit", data_limit, 1), ("finetune_steps", finetune_steps, 0),
                                 ("eval_samples", eval_samples, 1)):  # fmt: skip
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"CompressEnv: {name} must be an integer >= {minimum}, got {value!r}.")
    if not (isinstance(min_keep, int | float) and 0.0 < min_keep <= 1.0):
        raise ValueError(
            f"CompressEnv: min_keep (smallest keep ratio) must be a number in (0, 1], got {min_keep!r}."
        )
    if render_mode not in (None, *CompressEnv.metadata["render_modes"]):
        raise ValueError(f"CompressEnv: render_mode must be None or 'ansi', got {render_mode!r}.")


def build_episode_model(
    model: str | nn.Module | None,
    data: str | DatasetBundle | None,
    checkpoint: str | os.PathLike[str] | None,
    data_root: str | None,
    data_limit: int,
) -> tuple[nn.Module, dict[str, Any], DatasetBundle]:
    """(trained model in eval mode, its model config, the data) from a checkpoint, a module or a name."""
    if checkpoint is not None:
        if model is not None:
            raise ValueError(
                "CompressEnv: pass either model or checkpoint, not both (the checkpoint holds the model)."
            )
        trained, saved = load_trained_model(checkpoint)
        saved_data = (saved.get("data") or {}).get("name")
        if isinstance(data, str) and saved_data not in (None, data):
            raise ValueError(
                f"CompressEnv: checkpoint {checkpoint} was trained on {saved_data!r}, not data={data!r}."
            )
        bundle = resolve_data(data if data is not None else saved_data or "mnist", data_root, data_limit)
        check_input_shape(saved["model_config"]["input_shape"], bundle)
        return trained, dict(saved["model_config"]), bundle
    bundle = resolve_data(data if data is not None else "mnist", data_root, data_limit)
    if isinstance(model, nn.Module):
        return copy.deepcopy(model).eval(), {}, bundle  # the env moves it to its device
    model_config = {
        "_target_": f"deepiot.models.{REFERENCE_MODELS[model or 'lenet300'].__name__}",
        "input_shape": [int(size) for size in bundle.input_shape],
        "num_classes": int(bundle.num_classes),
    }
    if isinstance(data, DatasetBundle):
        state = pretrained_state(model_config, bundle)
    else:
        state = cached_pretrained_state(json.dumps(model_config), bundle.name, data_root, data_limit)
    trained = build_model(model_config)
    trained.load_state_dict(state)
    return trained.eval(), model_config, bundle


def resolve_data(data: str | DatasetBundle, data_root: str | None, data_limit: int) -> DatasetBundle:
    """A named dataset (cached per process) or the given bundle."""
    if isinstance(data, DatasetBundle):
        return data
    return load_dataset(data, data_root, data_limit)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str | None, limit: int) -> DatasetBundle:
    """Load a named dataset once per process (vectorised envs share it; the env never modifies it)."""
    return loaders_by_name[name](root=root, limit=limit)


def check_input_shape(model_input_shape: list[int], bundle: DatasetBundle) -> None:
    if tuple(model_input_shape) != tuple(bundle.input_shape):
        raise ValueError(
            f"CompressEnv: the checkpoint's model takes inputs of shape {tuple(model_input_shape)} but dataset "
            f"{bundle.name!r} has samples of shape {tuple(bundle.input_shape)}."
        )


@functools.lru_cache(maxsize=4)
def cached_pretrained_state(
    model_config_json: str, data: str, root: str | None, limit: int
) -> dict[str, Tensor]:
    """`pretrained_state` once per (model, named dataset) per process: vectorised envs share it."""
    return pretrained_state(json.loads(model_config_json), load_dataset(data, root, limit))


def pretrained_state(model_config: dict[str, Any], bundle: DatasetBundle) -> dict[str, Tensor]:
    """Weights of the model after `PRETRAIN_STEPS` Adam steps on `bundle.train`, deterministic (fixed seed;
    the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRETRAIN_SEED)
        model = build_model(model_config)
    inputs, labels = dataset_tensors(bundle.train, "train")
    train_steps(model, BatchStream(inputs, labels, BATCH_SIZE, PRETRAIN_SEED), PRETRAIN_STEPS)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def train_steps(
    model: nn.Module, batches: BatchStream, steps: int, masks: Mapping[str, Tensor] | None = None
) -> None:
    """`steps` Adam steps of cross-entropy on `batches` (through `masks` when `model` is a MaskedNetwork): the
    env's one training loop, for the built-in pre-training and the fine-tuning of every episode."""
    if steps == 0:
        return
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(steps):
        inputs, labels = batches.next()
        logits = model(inputs) if masks is None else model(inputs, masks)  # [B, classes]
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()

"""Drive `deepiot/Compress-v0` with a random policy and print one row per episode.

Each episode draws a keep ratio per group uniformly from the action space; the table shows the episode's
reward (−loss − λ·cost ratio), the compressed model's validation accuracy, the parameters kept, and the
wall time of the episode (steps + fine-tuning + evaluation; building the env, which loads the data and
pre-trains the model once, is timed separately).

Usage (from the repository root):
    python scripts/examples/env_random_policy.py                           # LeNet-300-100 / MNIST, 5 episodes
    python scripts/examples/env_random_policy.py --episodes 10 --model lenet5 --lam 2 --finetune-steps 50

Any gymnasium-compatible agent drives the same env. With stable-baselines3 (not a deepiot dependency:
`pip install stable-baselines3` into the same environment, keeping its torch):

    import gymnasium
    import deepiot  # registers deepiot/Compress-v0
    from stable_baselines3 import PPO

    env = gymnasium.make("deepiot/Compress-v0", lam=1.0)      # or model="lenet5", cost="macs", ...
    agent = PPO("MlpPolicy", env, n_steps=64, batch_size=32, verbose=1)
    agent.learn(total_timesteps=2_000)                        # one timestep = one group decision
    observation, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        action, _ = agent.predict(observation, deterministic=True)
        observation, reward, terminated, truncated, info = env.step(action)
    print(info["accuracy"], info["params"], info["cost_ratio"])
    env.unwrapped.export("outputs/env_ppo")                   # TorchScript + ONNX + slicing plan

Several envs in one process share the loaded data and pre-trained weights:
`gymnasium.make_vec("deepiot/Compress-v0", num_envs=4, vectorization_mode="sync")`.
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import torch

import deepiot  # noqa: F401  (registers deepiot/Compress-v0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="lenet300", help="lenet300, lenet5, vgg, lstm or deepsense")
    parser.add_argument("--data", default="mnist", help="mnist, hapt_activity, hapt_user or cifar10")
    parser.add_argument("--cost", default="params")
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--data-limit", type=int, default=2048)
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Run the episodes, print the table, and return its rows."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = gymnasium.make(
        "deepiot/Compress-v0",
        model=args.model,
        data=args.data,
        cost=args.cost,
        lam=args.lam,
        data_limit=args.data_limit,
        finetune_steps=args.finetune_steps,
    )
    print(f"env built in {time.perf_counter() - started:.2f} s (data loading + pre-training)")
    env.action_space.seed(args.seed)
    print(f"{'episode':>7} {'reward':>8} {'accuracy':>8} {'params kept %':>13} {'seconds':>7}")
    rows = []
    for episode in range(args.episodes):
        row = run_episode(env, seed=args.seed + episode)
        row["episode"] = episode
        rows.append(row)
        print(
            f"{episode:>7} {row['reward']:>8.4f} {row['accuracy']:>8.4f} {row['params_kept_percent']:>13.2f} "
            f"{row['seconds']:>7.3f}"
        )
    mean_seconds = sum(row["seconds"] for row in rows) / len(rows)
    print(
        f"mean time per episode: {mean_seconds:.3f} s; original accuracy {env.unwrapped.original_accuracy:.4f}"
    )
    env.close()
    return rows


def run_episode(env: gymnasium.Env, seed: int) -> dict[str, float]:
    """One episode with uniformly random keep ratios; its reward, accuracy, parameters kept and wall time."""
    started = time.perf_counter()
    env.reset(seed=seed)
    terminated, reward, info = False, 0.0, {}
    while not terminated:
        _, reward, terminated, _, info = env.step(env.action_space.sample())
    return {
        "reward": float(reward),
        "accuracy": info["accuracy"],
        "params_kept_percent": 100.0 * info["params"] / info["original_params"],
        "seconds": time.perf_counter() - started,
    }


if __name__ == "__main__":
    main()

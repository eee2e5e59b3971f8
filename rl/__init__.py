"""Preference optimisation and RL: pairs scored by the reward (``python -m rl.pairs``), DPO on them
(``python -m rl.dpo``, TRL) and online GRPO (``python -m rl.grpo``, TRL)."""

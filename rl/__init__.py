"""Preference optimisation: pairs scored by the reward (``python -m rl.pairs``); DPO comes next."""

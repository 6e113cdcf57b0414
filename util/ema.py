"""An exponential moving average of a model's weights (EMA, "Polyak averaging"), the averaged
copy that a short schedule evaluates instead of the last weights: train.py's --ema.

After each optimiser step every floating-point tensor of the state dict (weights and
BatchNorm running statistics) moves toward the trained model's, avg = d * avg + (1 - d) * w;
integer buffers (BatchNorm's step counter) are copied. The decay ramps up from 0 as
d_n = min(decay, (1 + n) / (10 + n)) after n updates, so the early, random weights are
forgotten quickly (the ramp of TensorFlow's ExponentialMovingAverage with num_updates).
"""
import copy

import torch


class WeightAverage:
    def __init__(self, model, decay, state=None):
        """A copy of model to average into with this decay per update (state: a state_dict() to continue)."""
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            self.load_state_dict(state)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, w in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(w.detach(), 1 - d)
            else:
                avg.copy_(w)

    def state_dict(self):
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state):
        self.updates = state["updates"]
        self.model.load_state_dict(state["model"])

"""Learning-rate schedules: linear warm-up, then multi-step, periodic (exponential-step) or cosine decay.

A schedule is a plain callable ``iteration -> lr`` (iteration = global 0-based update count), so the
training loop sets the rate itself before every update and resume needs nothing but the iteration.

Config keys (see ``lib.train.TRAIN_DEFAULTS``):
  LR                 base learning rate
  LR_SCHEDULE        'step' | 'periodic' | 'cosine'
  LR_STEPS           'step': boundaries (ascending); at each the rate is multiplied by LR_FACTOR
  LR_DECAY_PERIOD    'periodic': multiply by LR_FACTOR every LR_DECAY_PERIOD (e.g. LSTM-SSD: x0.95
                     every 200k iterations)
  LR_STEP_UNIT       'epoch' | 'iter': unit of LR_STEPS and LR_DECAY_PERIOD (fractional epochs allowed,
                     e.g. FGFA's step at epoch 1.333)
  LR_FACTOR          decay factor of 'step' and 'periodic'
  LR_MIN             'cosine': final rate, reached at iteration EPOCHS * iters_per_epoch
  WARMUP_ITERS       warm-up length in iterations; if 0, WARMUP_EPOCHS * iters_per_epoch is used
  WARMUP_EPOCHS      warm-up length in epochs (may be fractional)
  WARMUP_FACTOR      warm-up starts at LR * WARMUP_FACTOR and rises linearly to LR
  EPOCHS             total epochs ('cosine' needs it)
  ITERS_PER_EPOCH    used when ``iters_per_epoch`` is not passed and an epoch unit is needed
Steps, decay periods and the cosine horizon count from iteration 0 (warm-up included), as in the
reference codes (M2Det steps at epochs 90/110/... with 5 warm-up epochs).
"""
import math

SCHEDULES = ("step", "periodic", "cosine")


class LRSchedule:
    """Callable iteration -> learning rate. Boundaries are stored in iterations."""

    def __init__(self, base_lr, mode="step", steps=(), factor=0.1, period=0, total_iters=0,
                 min_lr=0.0, warmup_iters=0, warmup_factor=0.1):
        if mode not in SCHEDULES:
            raise ValueError(f"LR_SCHEDULE must be one of {SCHEDULES}, got {mode!r}")
        if base_lr <= 0:
            raise ValueError(f"LR must be > 0, got {base_lr}")
        steps = [int(s) for s in steps]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"LR_STEPS must be strictly increasing, got {steps} (in iterations)")
        if mode == "periodic" and period <= 0:
            raise ValueError(f"LR_SCHEDULE 'periodic' needs LR_DECAY_PERIOD > 0, got {period}")
        if mode == "cosine" and total_iters <= warmup_iters:
            raise ValueError(f"LR_SCHEDULE 'cosine' needs more total iterations ({total_iters}) "
                             f"than warm-up iterations ({warmup_iters})")
        if not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(f"WARMUP_FACTOR must be in [0, 1], got {warmup_factor}")
        self.base_lr = float(base_lr)
        self.mode = mode
        self.steps = steps
        self.factor = float(factor)
        self.period = int(period)
        self.total_iters = int(total_iters)
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def _decayed(self, iteration):
        if self.mode == "step":
            passed = sum(1 for s in self.steps if iteration >= s)
            return self.base_lr * self.factor ** passed
        if self.mode == "periodic":
            return self.base_lr * self.factor ** (iteration // self.period)
        progress = min(1.0, (iteration - self.warmup_iters) / (self.total_iters - self.warmup_iters))
        progress = max(0.0, progress)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, iteration):
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        lr = self._decayed(iteration)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * alpha)
        return lr

    def __repr__(self):
        return (f"LRSchedule(base_lr={self.base_lr}, mode={self.mode!r}, steps={self.steps}, "
                f"factor={self.factor}, period={self.period}, total_iters={self.total_iters}, "
                f"min_lr={self.min_lr}, warmup_iters={self.warmup_iters}, "
                f"warmup_factor={self.warmup_factor})")


def _get(cfg, key, default):
    return cfg[key] if key in cfg and cfg[key] is not None else default


def build_lr_schedule(cfg, iters_per_epoch=None):
    """Build an ``LRSchedule`` from the training config (keys in the module docstring).

    ``iters_per_epoch`` converts epoch units to iterations; if omitted, cfg ITERS_PER_EPOCH is used,
    and an error names the key when an epoch unit is needed but no epoch length is known.
    """
    ipe = iters_per_epoch if iters_per_epoch else _get(cfg, "ITERS_PER_EPOCH", 0)
    unit = _get(cfg, "LR_STEP_UNIT", "epoch")
    if unit not in ("epoch", "iter"):
        raise ValueError(f"LR_STEP_UNIT must be 'epoch' or 'iter', got {unit!r}")
    mode = _get(cfg, "LR_SCHEDULE", "step")

    def need_ipe(what):
        if not ipe or ipe <= 0:
            raise ValueError(f"{what} is given in epochs but the epoch length is unknown: pass "
                             f"iters_per_epoch or set ITERS_PER_EPOCH")
        return ipe

    def to_iters(value, what):
        if unit == "iter":
            return int(round(value))
        return int(round(value * need_ipe(what)))

    warmup_iters = int(_get(cfg, "WARMUP_ITERS", 0))
    warmup_epochs = float(_get(cfg, "WARMUP_EPOCHS", 0.0))
    if warmup_iters <= 0 and warmup_epochs > 0:
        warmup_iters = int(round(warmup_epochs * need_ipe("WARMUP_EPOCHS")))
    steps = [to_iters(s, "LR_STEPS") for s in _get(cfg, "LR_STEPS", [])] if mode == "step" else []
    period = to_iters(_get(cfg, "LR_DECAY_PERIOD", 0), "LR_DECAY_PERIOD") if mode == "periodic" else 0
    total_iters = 0
    if mode == "cosine":
        total_iters = int(round(float(_get(cfg, "EPOCHS", 0)) * need_ipe("EPOCHS (cosine horizon)")))
    return LRSchedule(base_lr=float(cfg["LR"]), mode=mode, steps=steps,
                      factor=float(_get(cfg, "LR_FACTOR", 0.1)), period=period,
                      total_iters=total_iters, min_lr=float(_get(cfg, "LR_MIN", 0.0)),
                      warmup_iters=warmup_iters,
                      warmup_factor=float(_get(cfg, "WARMUP_FACTOR", 0.1)))

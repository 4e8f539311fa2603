"""Adaptive interleaving policy of Looking Fast and Slow, trained with Double DQN.

State s_t (what the policy sees before choosing the extractor of frame t): global average pools of
the LSTM state c, h and of their change since the previous memory write (c - c_prev, h - h_prev),
plus a one-hot history of the last HISTORY actions. Actions: 0 = large, 1 = small.

Reward of action a at a frame: detection-loss gain + speed bonus,
    r(a) = (min_a' L_a' - L_a) + SPEED_BONUS * [a == small]
where L_a is the detection loss of that frame when extractor a runs from the same memory state (so
the better extractor for the frame scores 0 and the other loses its loss gap; the small one gets a
bonus for its speed). Double DQN (van Hasselt et al. 2016) target:
    y = r + GAMMA * Q_target(s', argmax_a Q_online(s', a))
with an experience replay and a periodically synced target network.
"""
import collections
import random

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

ACTIONS = ("large", "small")


def policy_features(state, prev_state, history, history_len):
    """(1, 4N + 2*history_len) float32 numpy feature vector of the current memory and actions."""
    c, h = (a.asnumpy() for a in state)
    pc, ph = (a.asnumpy() for a in prev_state)
    pooled = [x.mean(axis=(2, 3))[0] for x in (c, h, c - pc, h - ph)]
    hist = np.zeros((history_len, len(ACTIONS)), np.float32)
    recent = list(history)[-history_len:]
    for i, a in enumerate(reversed(recent)):   # row 0 = the most recent action
        hist[i, a] = 1.0
    return np.concatenate(pooled + [hist.reshape(-1)]).astype(np.float32)[None]


class PolicyNet(gluon.HybridBlock):
    """Small MLP: features -> Q values of (large, small)."""

    def __init__(self, hidden=64, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = gluon.nn.HybridSequential()
            self.body.add(gluon.nn.Dense(hidden, activation="relu"), gluon.nn.Dense(hidden, activation="relu"),
                          gluon.nn.Dense(len(ACTIONS)))

    def hybrid_forward(self, F, x):
        return self.body(x)


class PolicyAgent:
    """Greedy (or epsilon-greedy) extractor choice from the policy network."""

    def __init__(self, history_len=20, hidden=64, ctx=mx.cpu()):
        self.history_len, self.ctx = history_len, ctx
        self.net = PolicyNet(hidden)
        self.net.initialize(mx.init.Xavier(), ctx=ctx)

    def q_values(self, features):
        return self.net(mx.nd.array(features, ctx=self.ctx)).asnumpy()

    def act(self, state, prev_state, history, epsilon=0.0, rng=random):
        if epsilon > 0 and rng.random() < epsilon:
            return rng.randrange(len(ACTIONS))
        feats = policy_features(state, prev_state, history, self.history_len)
        return int(np.argmax(self.q_values(feats)[0]))

    def save(self, path):
        self.net.save_parameters(path)

    def load(self, path, features_dim):
        self.net(mx.nd.zeros((1, features_dim), ctx=self.ctx))
        self.net.load_parameters(path, ctx=self.ctx)


def double_dqn_targets(q_online_next, q_target_next, rewards, dones, gamma):
    """y = r + gamma * (1 - done) * Q_target(s', argmax_a Q_online(s', a)) (numpy, batched)."""
    best = np.argmax(q_online_next, axis=1)
    bootstrap = q_target_next[np.arange(len(best)), best]
    return rewards + gamma * (1.0 - dones) * bootstrap


def detection_rewards(losses, speed_bonus):
    """losses: {action index: detection loss of this frame} -> {action: reward}."""
    best = min(losses.values())
    return {a: (best - l) + (speed_bonus if ACTIONS[a] == "small" else 0.0) for a, l in losses.items()}


class DoubleDQN:
    def __init__(self, agent, gamma=0.9, lr=1e-3, replay=2000, batch=32, target_update=50, seed=0):
        self.agent, self.gamma, self.batch, self.target_update = agent, gamma, batch, target_update
        self.memory = collections.deque(maxlen=replay)
        self.target = PolicyNet(agent.net.body[0]._units)
        self.target.initialize(ctx=agent.ctx)
        self.trainer = None
        self.lr = lr
        self.updates = 0
        self.rng = random.Random(seed)
        self.loss_fn = gluon.loss.HuberLoss()

    def sync_target(self):
        for (_, p_t), (_, p_o) in zip(sorted(self.target._collect_params_with_prefix().items()),
                                      sorted(self.agent.net._collect_params_with_prefix().items())):
            p_t.set_data(p_o.data())

    def remember(self, s, a, r, s_next, done):
        self.memory.append((s[0], int(a), float(r), s_next[0], float(done)))

    def update(self):
        """One gradient step on a replay minibatch; returns the loss (None while the replay is small)."""
        if len(self.memory) < self.batch:
            return None
        batch = self.rng.sample(list(self.memory), self.batch)
        s, a, r, s2, d = (np.array(x) for x in zip(*batch))
        ctx = self.agent.ctx
        if self.trainer is None:
            self.agent.net(mx.nd.array(s, ctx=ctx))
            self.target(mx.nd.array(s, ctx=ctx))
            self.sync_target()
            self.trainer = gluon.Trainer(self.agent.net.collect_params(), "adam", {"learning_rate": self.lr})
        y = double_dqn_targets(self.agent.net(mx.nd.array(s2, ctx=ctx)).asnumpy(),
                               self.target(mx.nd.array(s2, ctx=ctx)).asnumpy(), r, d, self.gamma)
        with autograd.record():
            q = mx.nd.pick(self.agent.net(mx.nd.array(s, ctx=ctx)), mx.nd.array(a, ctx=ctx), axis=1)
            loss = self.loss_fn(q, mx.nd.array(y, ctx=ctx)).mean()
        loss.backward()
        self.trainer.step(1)
        self.updates += 1
        if self.updates % self.target_update == 0:
            self.sync_target()
        return float(loss.asscalar())


def train_policy(detector, clips, frame_loss, cfg, log=print):
    """Train the adaptive policy on a frozen detector.

    clips: iterable of (frames NDArray (1,T,3,S,S), targets per frame) to run through in order;
    frame_loss(cls, box, target) -> float detection loss of one frame. Returns the PolicyAgent.
    """
    p = cfg.POLICY_NET
    agent = PolicyAgent(p.HISTORY, p.HIDDEN)
    dqn = DoubleDQN(agent, p.GAMMA, p.LR, p.REPLAY, p.BATCH, p.TARGET_UPDATE, cfg.TRAIN.SEED)
    step = 0
    for frames, targets in clips:
        state = prev = detector.zero_state(1)
        history = []
        feats = policy_features(state, prev, history, p.HISTORY)
        steps = frames.shape[1]
        for t in range(steps):
            eps = max(p.EPSILON_END, p.EPSILON_START - (p.EPSILON_START - p.EPSILON_END) * step / max(p.EPSILON_STEPS, 1))
            a = agent.act(state, prev, history, eps, dqn.rng)
            outcomes, losses = {}, {}
            for i, name in enumerate(ACTIONS):       # both extractors from the same memory
                cls, box, new_state = detector.step(frames[:, t], state, name)
                outcomes[i] = new_state
                losses[i] = frame_loss(cls, box, targets[t])
            reward = detection_rewards(losses, p.SPEED_BONUS)[a]
            if outcomes[a] is not state:
                prev = state
            state = outcomes[a]
            history.append(a)
            next_feats = policy_features(state, prev, history, p.HISTORY)
            dqn.remember(feats, a, reward, next_feats, t == steps - 1)
            feats = next_feats
            loss = dqn.update()
            step += 1
            if loss is not None and step % 50 == 0:
                log(f"policy step {step}: td loss {loss:.4f}, eps {eps:.2f}, "
                    f"small share {np.mean([h == 1 for h in history]):.2f}")
            if step >= p.STEPS:
                return agent
    return agent

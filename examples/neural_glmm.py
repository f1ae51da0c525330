"""A neural network inside a GLMM: an MLP for the fixed part, random intercepts per user.

Scenario: predicting whether a web session ends in a conversion from its features x
(time of day, pages viewed, ... : here 4 numbers). The effect of x is non-linear, so a
neural network is the natural model for it; but sessions come from users, and some users
simply convert more than others. A network trained on sessions as if they were
independent learns the average user; it cannot use what it has seen of a known user,
and its probabilities blur the user-to-user spread into the effect of x.

The model here is a binomial GLMM whose fixed part is an equinox MLP,

    logit P(yᵢ = 1) = MLP(xᵢ) + β₀ + b_user(i),    b_user ~ N(0, θ²),

trained jointly in (MLP weights, β₀, θ) by maximizing the marginal (Laplace) likelihood
with optax. Each training step samples a minibatch of users and builds the model with
``glmmjax.MixedModel.from_arrays`` inside the jitted step (the network's output enters as
the offset); rows are padded to a fixed count with weight 0, which drops them exactly,
and the users are re-indexed 0..B−1 (``n_levels=B``), so every step has the same shapes
and compiles once. With one grouping factor the marginal likelihood is a sum over users,
so a minibatch of B users times (users / B) is an unbiased estimate of the whole: this is
plain stochastic gradient ascent on the exact objective.

Evaluation, against the same MLP trained without random effects (log-loss):

- held-out (later) sessions of users seen in training: the GLMM predicts with the
  user's conditional mode b̂ (``model.conditional_modes``) from the training sessions;
- sessions of new users: the GLMM predicts the population average E_b[σ(η + b)]
  (Gauss–Hermite over b ~ N(0, θ²)).

Data: simulated, so the truth is known (see ``simulate``): user intercepts with SD 1.0.

Run:  python examples/neural_glmm.py [--steps 300] [--users 300]   (about half a minute)
"""

from __future__ import annotations

import argparse
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import glmmjax

SIGMA_USER = 1.0
N_FEATURES = 4


def true_fixed_part(x: np.ndarray) -> np.ndarray:
    return 1.5 * np.sin(2.0 * x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.3


def simulate(n_users: int, n_new_users: int, seed: int = 0) -> dict:
    """Sessions of ``n_users`` known users (their first 70% for training, the rest held
    out) and of ``n_new_users`` users never seen in training."""
    rng = np.random.default_rng(seed)
    total = n_users + n_new_users
    b = rng.normal(0.0, SIGMA_USER, total)
    sessions = 2 + rng.poisson(14, total)
    user = np.repeat(np.arange(total), sessions)
    order = np.concatenate([np.arange(k) for k in sessions])  # session number per user
    x = rng.normal(size=(user.size, N_FEATURES))
    eta = true_fixed_part(x) + b[user]
    y = (rng.random(user.size) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    known = user < n_users
    train = known & (order < np.ceil(0.7 * sessions[user]))
    return {
        "train": {"x": x[train], "y": y[train], "user": user[train]},
        "held_out": {"x": x[known & ~train], "y": y[known & ~train],
                     "user": user[known & ~train]},
        "new_users": {"x": x[~known], "y": y[~known], "user": user[~known]},
        "n_users": n_users,
    }


class NeuralGLMM(eqx.Module):
    mlp: eqx.nn.MLP
    beta: jnp.ndarray  # intercept β₀
    theta: jnp.ndarray  # σ_user (lme4's θ for a scalar term: the SD, the residual scale being 1)

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(N_FEATURES, 1, width_size=32, depth=2, activation=jax.nn.tanh,
                              use_final_bias=False, key=key)
        self.beta = jnp.zeros(1)
        self.theta = jnp.ones(1)

    def fixed(self, x):
        return jax.vmap(self.mlp)(x)[:, 0]


def batch_by_users(data: dict, users: np.ndarray, n_rows: int) -> dict:
    """The rows of ``users``, re-indexed 0..B−1 and padded to ``n_rows`` with weight 0."""
    position = {u: k for k, u in enumerate(users)}
    rows = np.flatnonzero(np.isin(data["user"], users))[:n_rows]
    pad = n_rows - rows.size
    refs = np.array([position[u] for u in data["user"][rows]], dtype=np.int32)
    return {
        "x": np.concatenate([data["x"][rows], np.zeros((pad, N_FEATURES))]),
        "y": np.concatenate([data["y"][rows], np.zeros(pad)]),
        "refs": np.concatenate([refs, np.zeros(pad, np.int32)]),
        "weights": np.concatenate([np.ones(rows.size), np.zeros(pad)]),
    }


def mixed_model(net: NeuralGLMM, batch: dict, n_levels: int) -> glmmjax.MixedModel:
    n = batch["y"].shape[0]
    return glmmjax.MixedModel.from_arrays(
        jnp.ones((n, 1)), batch["y"], [(batch["refs"], None, n_levels)], family="binomial",
        weights=batch["weights"], offset=net.fixed(batch["x"]))


def glmm_loss(net: NeuralGLMM, batch: dict, n_levels: int, scale: float):
    """−log L (Laplace) of the minibatch's ``n_levels`` users, scaled to the whole
    training set (and divided by the batch's rows to keep Adam's steps comparable)."""
    model = mixed_model(net, batch, n_levels)
    params = glmmjax.Params(beta=net.beta, theta=net.theta, log_dispersion=jnp.zeros(0))
    return -scale * model.log_likelihood(params) / jnp.sum(batch["weights"])


def plain_loss(net: NeuralGLMM, batch: dict, n_levels: int, scale: float):
    """Binary cross-entropy of the same MLP (+ intercept) with sessions independent."""
    eta = net.fixed(batch["x"]) + net.beta[0]
    y, w = batch["y"], batch["weights"]
    ll = y * jax.nn.log_sigmoid(eta) + (1.0 - y) * jax.nn.log_sigmoid(-eta)
    return -jnp.sum(w * ll) / jnp.sum(w)


def train(loss, data: dict, steps: int, users_per_batch: int, seed: int):
    rng = np.random.default_rng(seed)
    net = NeuralGLMM(jax.random.PRNGKey(seed))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    n_users = data["n_users"]
    counts = np.bincount(data["train"]["user"], minlength=n_users)
    n_rows = int(np.sort(counts)[-users_per_batch:].sum())  # fits any B users' rows
    objective = functools.partial(loss, n_levels=users_per_batch,
                                  scale=n_users / users_per_batch)

    @eqx.filter_jit
    def step(net, state, batch):
        value, grads = eqx.filter_value_and_grad(objective)(net, batch)
        updates, state = optimizer.update(grads, state, eqx.filter(net, eqx.is_inexact_array))
        return eqx.apply_updates(net, updates), state, value

    for _ in range(steps):
        users = rng.choice(n_users, users_per_batch, replace=False)
        batch = {k: jnp.asarray(v) for k, v in
                 batch_by_users(data["train"], users, n_rows).items()}
        net, state, _ = step(net, state, batch)
    return net


def log_loss(y, p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def auc(y, score):
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    ranks = pd.Series(score).rank().to_numpy()
    positive = y == 1
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def predict_mixed(net: NeuralGLMM, data: dict) -> dict:
    """Held-out sessions of known users with b̂ from their training sessions; new users
    by the population average over b ~ N(0, θ²)."""
    train_set = data["train"]
    batch = {"x": jnp.asarray(train_set["x"]), "y": jnp.asarray(train_set["y"]),
             "refs": jnp.asarray(train_set["user"], dtype=jnp.int32),
             "weights": jnp.ones(train_set["y"].shape[0])}
    model = mixed_model(net, batch, data["n_users"])
    params = glmmjax.Params(beta=net.beta, theta=net.theta, log_dispersion=jnp.zeros(0))
    (b,) = model.conditional_modes(params)
    held = data["held_out"]
    eta = np.asarray(net.fixed(jnp.asarray(held["x"])) + net.beta[0]) + np.asarray(b)[held["user"], 0]
    new = data["new_users"]
    eta_new = np.asarray(net.fixed(jnp.asarray(new["x"])) + net.beta[0])
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    sd = abs(float(net.theta[0]))
    p_new = (weights / weights.sum() / (1.0 + np.exp(-(eta_new[:, None] + sd * nodes)))).sum(1)
    return {"held_out": 1.0 / (1.0 + np.exp(-eta)), "new_users": p_new}


def predict_plain(net: NeuralGLMM, data: dict) -> dict:
    return {key: np.asarray(jax.nn.sigmoid(net.fixed(jnp.asarray(data[key]["x"])) + net.beta[0]))
            for key in ("held_out", "new_users")}


def main(n_users: int = 300, n_new_users: int = 100, steps: int = 300,
         users_per_batch: int = 32, seed: int = 0, verbose: bool = True) -> pd.DataFrame:
    """Train both models, evaluate them, print the comparison.

    Returns:
        DataFrame indexed by (model, sessions) with log_loss and auc; ``attrs`` holds the
        learned σ_user, its true value and the training seconds.
    """
    data = simulate(n_users, n_new_users, seed)
    with jax.enable_x64(True):
        start = time.perf_counter()
        mixed = train(glmm_loss, data, steps, users_per_batch, seed)
        plain = train(plain_loss, data, steps, users_per_batch, seed)
        seconds = time.perf_counter() - start
        predictions = {"MLP + random intercepts (GLMM)": predict_mixed(mixed, data),
                       "MLP alone": predict_plain(plain, data)}
    rows = []
    for name, predicted in predictions.items():
        for key, label in (("held_out", "known users, later sessions"),
                           ("new_users", "new users")):
            y = data[key]["y"]
            rows.append({"model": name, "sessions": label,
                         "log_loss": log_loss(y, predicted[key]),
                         "auc": auc(y, predicted[key])})
    table = pd.DataFrame(rows).set_index(["model", "sessions"])
    table.attrs.update(sigma_user=abs(float(mixed.theta[0])), true_sigma_user=SIGMA_USER,
                       seconds=seconds)
    if verbose:
        print(f"{n_users} known users ({len(data['train']['y'])} training sessions, "
              f"{len(data['held_out']['y'])} held out), {n_new_users} new users "
              f"({len(data['new_users']['y'])} sessions); {steps} steps of "
              f"{users_per_batch} users each, both models: {seconds:.1f} s")
        print(f"learned σ_user {table.attrs['sigma_user']:.3f} (true {SIGMA_USER})")
        print(table.to_string(float_format="{:.4f}".format))
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--new-users", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-users", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(n_users=args.users, n_new_users=args.new_users, steps=args.steps,
         users_per_batch=args.batch_users, seed=args.seed)

"""The differentiable-API examples run end to end at a small size and say what they claim."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_example


@pytest.mark.slow  # a training run (10 s); the API it uses is tested in test_differentiable.py
def test_neural_glmm_beats_the_plain_network_on_known_users(capsys):
    example = load_example("neural_glmm")
    table = example.main(n_users=150, n_new_users=60, steps=150, users_per_batch=16)
    printed = capsys.readouterr().out
    assert "learned σ_user" in printed and "MLP alone" in printed
    mixed = table.loc["MLP + random intercepts (GLMM)"]
    plain = table.loc["MLP alone"]
    known, new = "known users, later sessions", "new users"
    # What the user's own history buys: clearly better predictions for known users ...
    assert mixed.loc[known, "log_loss"] < plain.loc[known, "log_loss"] - 0.01
    assert mixed.loc[known, "auc"] > plain.loc[known, "auc"]
    # ... and no loss on users never seen (population-averaged prediction).
    assert mixed.loc[new, "log_loss"] < plain.loc[new, "log_loss"] + 0.01
    assert 0.6 < table.attrs["sigma_user"] < 1.6  # true 1.0, learned jointly with the MLP


def test_minibatch_padding_drops_rows_exactly():
    """A padded minibatch (weight-0 rows) has the log-likelihood of its rows alone."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import glmmjax

    example = load_example("neural_glmm")
    data = example.simulate(20, 0, seed=3)
    with jax.enable_x64(True):
        net = example.NeuralGLMM(jax.random.PRNGKey(0))
        net = eqx.tree_at(lambda n: n.theta, net, jnp.array([0.8]))
        params = glmmjax.Params(beta=net.beta, theta=net.theta, log_dispersion=jnp.zeros(0))
        users = np.array([4, 11, 7])
        padded = example.batch_by_users(data["train"], users, 120)
        tight = example.batch_by_users(data["train"], users, int(padded["weights"].sum()))
        values = [example.mixed_model(net, {k: jnp.asarray(v) for k, v in b.items()}, 3)
                  .log_likelihood(params) for b in (padded, tight)]
    assert padded["weights"].sum() < 120
    np.testing.assert_allclose(values[0], values[1], rtol=1e-12)


@pytest.mark.slow
def test_influence_jacobian_tracks_case_deletion(tmp_path, capsys):
    example = load_example("influence")
    out = tmp_path / "influence.png"
    result = example.main(out=out)
    printed = capsys.readouterr().out
    assert "Most influential observations" in printed
    rows = result["rows"]
    assert result["jacobian"].shape == (2, 180)
    for name in result["names"]:
        corr = np.corrcoef(rows[f"d_{name}"], rows[f"d_{name}_linear"])[0, 1]
        assert corr > 0.99, name
    # The jacobian finds the same most influential observation as the 180 refits.
    assert rows["cooks_distance"].idxmax() == rows["cooks_distance_linear"].idxmax()
    # Scaling every weight by c is absorbed by σ² (and Λ by 1/√c): β̂ does not move, so
    # the jacobian's rows sum to zero, a property no finite difference was told about.
    np.testing.assert_allclose(result["jacobian"].sum(axis=1), 0.0, atol=1e-7)
    assert result["plot_path"] == out and out.stat().st_size > 1000

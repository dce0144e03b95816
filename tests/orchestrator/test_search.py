"""Tune's searchers as a sweep builds them, on the real local Ray instance (no training: a trainable
that scores the sampled weights, so that what is checked is the search itself)."""

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tipslab.orchestrator.search import SearchSpec, scheduler, searcher, tune_space

SPACE = {"loss.distill_weight": {"uniform": [0.0, 2.0]}, "loss.mim_weight": {"choice": [0.5, 2.0]}}


def run(search, done=()):
    def score(config):  # defined here so that Ray ships it by value (workers cannot import tests)
        tune.report({"eval/x/score": -((config["loss.distill_weight"] - 1.0) ** 2) + config["loss.mim_weight"]})

    tuner = tune.Tuner(
        tune.with_resources(score, {"cpu": 0, "memory": 1}),
        param_space=tune_space(search),
        tune_config=tune.TuneConfig(
            num_samples=search.num_samples,
            metric=search.metric,
            mode=search.mode,
            search_alg=searcher(search, 0, list(done)),
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(verbose=0),
    )
    return tuner.fit()


def test_optuna_tpe_through_rays_integration_samples_the_space_and_is_told_past_results(ray_session, tmp_path):
    search = SearchSpec(algorithm="tpe", metric="eval/x/score", mode="max", num_samples=4, space=SPACE)
    done = [({"loss.distill_weight": 1.0, "loss.mim_weight": 2.0}, 3.0)]
    results = run(search, done)
    configs = [r.config for r in results]
    assert len(configs) == 4 and not any(r.error for r in results)
    assert all(0.0 <= c["loss.distill_weight"] <= 2.0 and c["loss.mim_weight"] in (0.5, 2.0) for c in configs)
    assert len({c["loss.distill_weight"] for c in configs}) == 4  # samples, not a fixed point
    assert isinstance(searcher(search, 0, done), OptunaSearch)


def test_random_search_and_asha(ray_session):
    search = SearchSpec(
        algorithm="random",
        metric="eval/x/score",
        mode="max",
        num_samples=3,
        space=SPACE,
        scheduler="asha",
        grace_period=1,
    )
    assert searcher(search, 0, []) is None
    assert type(scheduler(search, search.metric, search.mode)).__name__ == "AsyncHyperBandScheduler"
    assert scheduler(SearchSpec(algorithm="random"), "eval/x/score", "max") is None
    assert len(run(search)) == 3

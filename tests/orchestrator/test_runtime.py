"""How tipslab starts Ray's own parts: Ray Data's stats actor outlives the trials (orchestrator/runtime.py)."""

import time

import pytest

STATS_ACTOR = ("datasets_stats_actor", "_dataset_stats_actor")  # Ray Data's name and namespace for it


def stats_actor_id() -> str | None:
    import ray

    try:
        return ray.get_actor(*STATS_ACTOR)._actor_id.hex()
    except ValueError:  # none alive
        return None


def gone_within(actor_id: str, seconds: float = 20.0) -> bool:
    from ray.util.state import get_actor

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if get_actor(actor_id).state == "DEAD":
            return True
        time.sleep(0.2)
    return False


def run_dataset_in_a_trials_group() -> str:
    """A dataset run inside a placement group that captures what is started within it, as Tune's
    trials are, then the group removed, as at a trial's end; the id of the stats actor it used."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=1)
    def trial():
        import ray.data

        rows = ray.data.range(4, override_num_blocks=1).map_batches(lambda b: b, num_cpus=0).count()
        return rows, ray.get_actor("datasets_stats_actor", "_dataset_stats_actor")._actor_id.hex()

    group = placement_group([{"CPU": 1}])
    ray.get(group.ready())
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    try:
        rows, used = ray.get(trial.options(scheduling_strategy=strategy).remote())
        assert rows == 4 and used is not None
        return used
    finally:
        remove_placement_group(group)


@pytest.mark.usefixtures("ray_session")
def test_ray_datas_stats_actor_started_by_the_driver_outlives_a_trials_group():
    import ray

    from tipslab.orchestrator.runtime import start_data_stats_actor

    if (existing := stats_actor_id()) is not None:  # another test's datasets started it
        ray.kill(ray.get_actor(*STATS_ACTOR))
        assert gone_within(existing)
    # Left to Ray Data, the first dataset starts it inside the trial's group, and it dies with the group.
    inside = run_dataset_in_a_trials_group()
    assert gone_within(inside)
    # Started by the driver first, the trial's dataset uses it, and it stays.
    start_data_stats_actor()
    ours = stats_actor_id()
    assert ours is not None
    assert run_dataset_in_a_trials_group() == ours
    assert not gone_within(ours, seconds=2.0)  # the group's own actor died within a second above
    assert stats_actor_id() == ours
    start_data_stats_actor()  # a second sweep's start: the same one
    assert stats_actor_id() == ours


@pytest.mark.usefixtures("ray_session")
def test_a_local_instances_workers_run_no_preemption_watcher():
    """On one machine there is no node to be preempted: Ray Train's watcher process stays off there."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def environment(key: str) -> str | None:
        return os.environ.get(key)

    assert ray.get(environment.remote("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")) == "0"

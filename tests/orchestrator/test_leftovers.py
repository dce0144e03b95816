"""A resumed sweep frees placement groups that dead jobs left, and only those (orchestrator/leftovers.py)."""

import subprocess
import sys

# A job that leaves a detached placement group behind on purpose, and exits.
DETACHED = """
import ray
from ray.util.placement_group import placement_group
ray.init(address="{address}")
group = placement_group([{{"memory": 1024}}], lifetime="detached")
ray.get(group.ready())
print(group.id.hex())
"""


def test_the_groups_of_live_jobs_and_detached_ones_stay(ray_session):
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

    from tipslab.orchestrator.leftovers import remove_dead_jobs_placement_groups
    from tipslab.orchestrator.runtime import RAY_PLACES

    assert RAY_PLACES["dashboard"]  # the session's instance has its dashboard, where the state API is
    mine = placement_group([{"memory": 1024}])  # this job's: alive
    ray.get(mine.ready())
    address = ray.get_runtime_context().gcs_address
    script = DETACHED.format(address=address)
    detached = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    try:
        removed = remove_dead_jobs_placement_groups(RAY_PLACES["dashboard"])
        assert mine.id.hex() not in removed and detached not in removed
        table = ray.util.placement_group_table()
        assert table[mine.id.hex()]["state"] == "CREATED" and table[detached]["state"] == "CREATED"
    finally:
        remove_placement_group(mine)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(detached)))


def test_without_a_dashboard_nothing_is_asked():
    from tipslab.orchestrator.leftovers import remove_dead_jobs_placement_groups

    assert remove_dead_jobs_placement_groups("") == []

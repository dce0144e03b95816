"""What a sweep driver that died can leave on a Ray cluster that outlives it: placement groups.

Ray removes a job's placement groups when the job ends, but a driver killed while its trials train
sometimes leaves one behind (seen on Ray 2.60: a trial's worker-group group, one CPU, still
CREATED minutes after its job was dead). Its CPUs then stay reserved, and a resumed sweep on a
small cluster waits for them forever. A resumed sweep removes such groups first: placement groups
in state CREATED, not detached, whose creating job is no longer alive. It asks Ray's state API at
the dashboard's address, and skips the cleaning (saying why) when that does not answer.
"""

import sys

STATE_TIMEOUT_S = 10


def remove_dead_jobs_placement_groups(dashboard: str) -> list[str]:
    """Remove the placement groups that dead jobs left (module docstring); return their ids."""
    import ray
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_jobs, list_placement_groups

    if not dashboard:
        return []
    try:
        # The groups first: a job that makes one after this listing is not taken for a dead one.
        groups = list_placement_groups(
            address=dashboard, filters=[("state", "=", "CREATED")], detail=True, timeout=STATE_TIMEOUT_S
        )
        alive = {j.job_id for j in list_jobs(address=dashboard, timeout=STATE_TIMEOUT_S) if j.status == "RUNNING"}
    except Exception as err:  # the state API away: the sweep goes on, as it did before this cleaning
        print(f"placement groups left by dead jobs not checked: {type(err).__name__}: {err}", file=sys.stderr)
        return []
    removed = []
    for group in groups:
        if group.is_detached or group.creator_job_id in alive:
            continue
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.placement_group_id)))
        removed.append(group.placement_group_id)
    if removed:
        print(
            f"removed {len(removed)} placement group(s) that dead jobs had left holding resources: "
            + ", ".join(removed),
            file=sys.stderr,
        )
    return removed

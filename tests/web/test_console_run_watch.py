"""The console's run page shows the watch: the best held-out step, why the run stopped, its reward-hack alarm."""

from __future__ import annotations

from typing import Any

from teachloop.core.training import RewardHackAlarm
from teachloop.store import BlobStore, Database
from teachloop.train.runs import RunStore
from tests.web.conftest import World, sign_in


def test_run_page_shows_the_reward_hack_alarm(client: Any, world: World, database: Database,
                                              blobs: BlobStore) -> None:
    sign_in(client, world.acme.viewer)
    run_id, org = world.acme_pages.run, world.acme.id
    quiet = client.get(f"/runs/{run_id}").text
    assert "reward-hack-alarm" not in quiet and "Best held-out" not in quiet
    runs = RunStore(database, blobs)
    runs.update(org, run_id, best_step=4, best_score=0.8125, stop_reason="reward_hack_alarm")
    runs.record_alarm(org, run_id, RewardHackAlarm(
        step=8, window_start=4, train_slope=0.25, train_p=0.02, heldout_before=0.8125, heldout_after=0.4,
        heldout_p=0.001, heldout_tasks=6, alpha=0.05, min_drop=0.02, action="stop"))
    html = client.get(f"/runs/{run_id}").text
    assert 'id="reward-hack-alarm"' in html and "reward-hack alarm at step 8" in html
    assert "0.8125 -&gt; 0.4" in html and "never promotes this run" in html
    assert "step 4 (0.8125)" in html and "reward hack alarm" in html  # best held-out; stopped
    assert "Held-out eval: reward_mean" in html  # the held-out curve stays

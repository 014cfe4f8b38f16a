"""Batching of compatible jobs: queued jobs with the same size, sampler, steps, LoRA set, ... run as
one UNet batch (fewer UNet calls than jobs x steps, read off /metrics), and every job's image is
byte for byte what the same job gives alone on a server that does not batch."""
import re
import threading
import time

from test_server import ServerProcess, pixels, server, start_long_job  # noqa: F401 (fixture)


def metrics(s):
    text = s.request("GET", "/metrics")[2].decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def compatible_bodies():
    """Eight jobs that may share a batch: same size, sampler, steps; their own prompts, negative
    prompts, seeds, CFG scales and batch sizes."""
    bodies = []
    for i in range(8):
        bodies.append({"prompt": f"a photo of thing number {i}, (detailed:1.{i})", "width": 32, "height": 32,
                       "negative_prompt": "blurry" if i % 2 else "", "steps": 3, "sampler": "Euler a",
                       "seed": 1000 + 17 * i, "cfg_scale": 5 + i * 0.5, "batch_size": 2 if i == 3 else 1})
    return bodies


def wait_status(s, jid, want, timeout=60):
    deadline = time.time() + timeout
    while s.json("GET", f"/v1/jobs/{jid}")[1]["status"] != want:
        assert time.time() < deadline
        time.sleep(0.01)


def test_compatible_jobs_share_unet_calls_and_equal_their_single_twins(server, tmp_path):
    s = server("--max-steps", "1000", "--max-batch-jobs", "8", "--max-batch", "16")
    before = metrics(s)
    blocker = start_long_job(s)  # keeps the worker busy while the others queue up
    wait_status(s, blocker, "running")
    bodies = compatible_bodies()
    ids = [s.json("POST", "/v1/jobs", b)[1]["id"] for b in bodies]
    # Incompatible with them: other steps, other size.
    odd_steps = dict(bodies[0], steps=4)
    odd_size = dict(bodies[1], width=40)
    odd_ids = [s.json("POST", "/v1/jobs", b)[1]["id"] for b in (odd_steps, odd_size)]
    # Per-job progress events of a batched job: its own steps, in order, then done.
    events = []
    from test_server import read_events
    reader = threading.Thread(target=read_events, args=(s, ids[2], events))
    reader.start()
    assert s.json("POST", f"/v1/jobs/{blocker}/cancel")[0] == 200
    done = [s.wait_job(j) for j in ids + odd_ids]
    reader.join(60)
    assert all(d["status"] == "succeeded" for d in done), done
    blocker_steps = s.json("GET", f"/v1/jobs/{blocker}")[1]["step"]
    after = metrics(s)

    # One UNet call per step for the eight, one per step for each of the two others.
    calls = after["sdserve_unet_calls_total"] - before["sdserve_unet_calls_total"]
    assert calls == blocker_steps + 3 + 4 + 3, (calls, blocker_steps)
    assert calls < blocker_steps + 8 * 3
    assert after["sdserve_batched_jobs_total"] - before.get("sdserve_batched_jobs_total", 0) == 8
    runs = after["sdserve_batch_jobs_count"] - before.get("sdserve_batch_jobs_count", 0)
    lone = after['sdserve_batch_jobs_bucket{le="1"}'] - before.get('sdserve_batch_jobs_bucket{le="1"}', 0)
    assert (runs, lone) == (4, 3)  # the blocker and the two odd ones alone, the eight together
    assert after["sdserve_images_total"] - before["sdserve_images_total"] == 9 + 2

    progress = [d["step"] for e, d in events[1:] if e == "progress"]
    assert events[-1][0] == "done" and progress and progress == sorted(progress) and progress[-1] == 3, events
    # Each job keeps its own infotext and seeds.
    for b, d in zip(bodies, done):
        assert len(d["images"]) == b["batch_size"]
        assert d["seeds"] == [b["seed"] + k for k in range(b["batch_size"])]
        assert b["prompt"] in d["infotexts"][0] and f"Seed: {b['seed']}" in d["infotexts"][0]

    # The same jobs, one at a time, on a server that does not batch: the same bytes.
    alone = server("--max-batch-jobs", "1", "--max-batch", "16")
    for b, d in zip(bodies + [odd_steps, odd_size], done):
        status, twin = alone.json("POST", "/v1/jobs", b)
        twin = alone.wait_job(twin["id"])
        assert twin["infotexts"] == d["infotexts"]
        for n in range(len(d["images"])):
            got = s.request("GET", d["images"][n])[2]
            want = alone.request("GET", twin["images"][n])[2]
            assert pixels(got, tmp_path)[3] == pixels(want, tmp_path)[3], (b, n)
            assert got == want
    solo = metrics(alone)
    assert solo["sdserve_batched_jobs_total"] == 0


def test_canceled_job_in_a_batch_drops_out_the_others_finish(server):
    s = server("--max-steps", "1000", "--max-batch-jobs", "4")
    blocker = start_long_job(s)
    wait_status(s, blocker, "running")
    body = {"prompt": "slow", "width": 32, "height": 32, "steps": 12, "seed": 5}
    ids = [s.json("POST", "/v1/jobs", dict(body, seed=5 + i))[1]["id"] for i in range(3)]
    s.json("POST", f"/v1/jobs/{blocker}/cancel")
    wait_status(s, ids[1], "running")
    for j in ids:  # the three run together
        assert s.json("GET", f"/v1/jobs/{j}")[1]["status"] == "running"
    deadline = time.time() + 60
    while s.json("GET", f"/v1/jobs/{ids[1]}")[1]["step"] < 2:
        assert time.time() < deadline
        time.sleep(0.01)
    assert s.json("POST", f"/v1/jobs/{ids[1]}/cancel")[0] == 200
    canceled = s.wait_job(ids[1], timeout=60)
    assert canceled["status"] == "canceled" and not canceled["images"]
    others = [s.wait_job(j, timeout=120) for j in (ids[0], ids[2])]
    assert all(o["status"] == "succeeded" and o["step"] == 12 for o in others), others
    # A canceled job ends before its partners do.
    assert canceled["timings"]["running_s"] < min(o["timings"]["running_s"] for o in others)

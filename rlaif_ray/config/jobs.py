"""One config dataclass per job. Each composes role configs from `roles.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .roles import (
    Dtype,
    FeedbackPoolConfig,
    GoldConfig,
    JudgeConfig,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    RayConfig,
    RolloutConfig,
    SamplingConfig,
    SyncConfig,
)
from .schema import ConfigError, field_

PAIRS_REQUIRED = "a pairs file is required (input=path.jsonl)"
PROMPTS_REQUIRED = "a prompts file is required (prompts=path.jsonl)"


@dataclass
class LabelJob:
    input: str = field_("", "pairs to label (prompt, response_a, response_b)", required=PAIRS_REQUIRED)
    output: str = field_("", "preference dataset to write (default: <run_dir>/preferences.jsonl)")
    run_dir: str = field_("runs/label", "label store, metrics and effective config go here")
    max_examples: int | None = field_(None, "label at most this many pairs", ge=1)
    chunk_pairs: int = field_(50_000, "pairs read, judged and written at a time: the driver's memory holds one "
                              "chunk's pairs and rows, whatever the input's size", ge=1)
    pool: FeedbackPoolConfig = field_(FeedbackPoolConfig(), "the AI-feedback labeling pool")
    gold: GoldConfig = field_(GoldConfig(), "optional gold: the summary reports the labels' agreement with it")
    ray: RayConfig = field_(RayConfig(), "Ray cluster")


@dataclass
class LabelHumanJob:
    annotator: str = field_("human", "name stored with every label")
    input: str = field_("", "pairs (prompt, response_a, response_b) to label by hand, JSONL or Parquet",
                        required=PAIRS_REQUIRED)
    output: str = field_("", "human preferences, appended as you go (default: <run_dir>/human_preferences.jsonl)")
    run_dir: str = field_("runs/label-human", "output and effective config go here")
    max_examples: int | None = field_(None, "show at most this many pairs", ge=1)
    seed: int = field_(0, "seed of the per-pair display order (which response is shown first)", ge=0)


@dataclass
class GeneratePairsJob:
    prompts: str = field_("", "prompts file (JSONL/Parquet with a `prompt` field)",
                          required=PROMPTS_REQUIRED)
    output: str = field_("", "unlabeled pairs to write (default: <run_dir>/pairs.jsonl)")
    run_dir: str = field_("runs/generate-pairs", "outputs and effective config")
    policy: ModelConfig = field_(ModelConfig(), "policy that samples the responses")
    policy_b: ModelConfig | None = field_(None, "optional second policy for response_b")
    instructions_b: list[str] = field_([], "response_b from the same policy with one of these appended to the "
                                       "prompt's user turn (cycled over the prompts): pairs that differ in what "
                                       "the judge judges, e.g. a warm and a rude variant; the pair keeps the "
                                       "plain prompt")
    max_prompts: int | None = field_(None, "use at most this many prompts", ge=1)
    rollout: RolloutConfig = field_(RolloutConfig(), "rollout workers")
    sampling: SamplingConfig = field_(SamplingConfig(n=2, temperature=1.0), "sampling: n samples per prompt "
                                      "(>= 2 with one policy; per policy with two)")
    pairs_per_prompt: int = field_(1, "up to this many disjoint pairs of distinct responses per prompt", ge=1)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")

    def validate(self) -> None:
        if self.policy_b is None and not self.instructions_b and self.sampling.n < 2:
            raise ConfigError(f"sampling.n: {self.sampling.n} is below 2, the minimum for pairs from one policy")
        if self.policy_b is not None and self.instructions_b:
            raise ConfigError("instructions_b: response_b comes from policy_b or from instructions, not both")


@dataclass
class CritiqueReviseJob:
    prompts: str = field_("", "prompts file (JSONL/Parquet with a `prompt` field)", required=PROMPTS_REQUIRED)
    run_dir: str = field_("runs/critique-revise", "the policy's answers, the store of critiques and revisions, "
                          "outputs, summary")
    output: str = field_("", "SFT data to write, prompt -> final revision (default: <run_dir>/sft.jsonl)")
    preferences: bool = field_(True, "also write <run_dir>/preferences.jsonl: final revision chosen over the "
                               "policy's original answer")
    max_prompts: int | None = field_(None, "use at most this many prompts", ge=1)
    policy: ModelConfig = field_(ModelConfig(), "the policy that answers each prompt (rollout workers)")
    instructions: list[str] = field_([], "optional: one of these appended (cycled) to each prompt the policy "
                                     "answers, to elicit answers worth revising (red-teaming); the critic and the "
                                     "output rows see the plain prompt, the row records the instruction")
    rollout: RolloutConfig = field_(RolloutConfig(), "rollout workers")
    sampling: SamplingConfig = field_(SamplingConfig(temperature=0.7), "the policy's sampling (n is 1)")
    constitution: str = field_("default", "constitution YAML (id, critique, revision per principle); 'default' = "
                               "the shipped sample")
    rounds: int = field_(1, "critique -> revision rounds; round r critiques round r-1's revision", ge=1)
    seed: int = field_(0, "seed of the principle drawn per prompt and round", ge=0)
    critic: FeedbackPoolConfig = field_(FeedbackPoolConfig(judge=JudgeConfig(temperature=0.0)),
                                        "the pool whose judge writes critiques and revisions (anthropic, openai "
                                        "or local); its store is <run_dir>/labels")
    critique_tokens: int = field_(192, "answer budget of one critique", ge=8)
    revision_tokens: int = field_(256, "answer budget of one revision", ge=8)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")

    def validate(self) -> None:
        if self.sampling.n != 1:
            raise ConfigError(f"sampling.n: the policy answers each prompt once (got {self.sampling.n})")
        if self.critic.judge.kind in ("function", "anthropic-batch"):
            raise ConfigError(f"critic.judge.kind: {self.critic.judge.kind!r} cannot write critiques here; use "
                              "anthropic, openai or local")
        from ..feedback.constitution import load_constitution

        try:
            load_constitution(self.constitution)
        except ValueError as e:
            raise ConfigError(f"constitution: {e}") from None


@dataclass
class TrainSFTJob:
    data: str = field_("", "SFT data in TRL's formats: {prompt, completion} rows (text or messages) or "
                       "conversational {messages} rows", required="an SFT data file is required (data=path.jsonl)")
    run_dir: str = field_("runs/train-sft", "checkpoints, metrics, effective config")
    model: ModelConfig = field_(ModelConfig(), "the model to fine-tune (LoRA with model.lora.enabled)")
    learner: LearnerConfig = field_(LearnerConfig(lr=2e-5), "learner group (learner.max_length cuts examples)")
    epochs: int = field_(1, "passes over the training split", ge=1)
    val_fraction: float = field_(0.05, "held-out fraction (by record id) for the validation loss", ge=0, le=0.9)
    packing: bool = field_(False, "pack several examples into each row of learner.max_length (best-fit "
                           "decreasing; attention stays within each example)")
    checkpoint_every: int = field_(0, "steps between checkpoints (0 = end of each epoch)", ge=0)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")


@dataclass
class TrainRMJob:
    train: str = field_("", "preferences (AI-labeled) to train on",
                        required="a preferences file is required (train=path.jsonl)")
    human_eval: str | None = field_(None, "optional human-labeled preferences for held-out accuracy")
    run_dir: str = field_("runs/train-rm", "checkpoints, metrics, effective config")
    model: ModelConfig = field_(ModelConfig(), "backbone of the reward model")
    learner: LearnerConfig = field_(LearnerConfig(lr=1e-4), "learner group")
    epochs: int = field_(1, "passes over the training split", ge=1)
    val_fraction: float = field_(0.1, "held-out fraction of `train`", ge=0, le=0.9)
    margin: float = field_(0.0, "Bradley-Terry margin", ge=0)
    soft_labels: bool = field_(True, "use P(a > b) as a soft target when present")
    checkpoint_every: int = field_(0, "steps between checkpoints (0 = end of each epoch)", ge=0)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")


@dataclass
class DPOStage:
    name: str = field_("ai", "stage name (used in output paths and metrics)")
    data: str = field_("", "preferences for this stage")
    epochs: int = field_(1, "passes over the stage's data", ge=1)
    lr: float = field_(5e-6, "learning rate of this stage", gt=0)
    beta: float = field_(0.1, "DPO temperature", gt=0)
    loss: Literal["sigmoid", "ipo", "conservative"] = field_("sigmoid", "DPO variant")
    label_smoothing: float = field_(0.0, "conservative-DPO epsilon", ge=0, le=0.5)
    soft_labels: bool = field_(False, "use the judge's P(a > b) as the target (soft-label DPO)")
    reference: str = field_("initial", "reference model: 'initial', 'previous' (last stage's policy) or a path")


@dataclass
class TrainDPOJob:
    run_dir: str = field_("runs/train-dpo", "checkpoints, metrics, effective config")
    model: ModelConfig = field_(ModelConfig(), "policy to train")
    stages: list[DPOStage] = field_([DPOStage()], "stages run in order (AI prefs, then human prefs, ...)")
    val_fraction: float = field_(0.1, "held-out fraction per stage", ge=0, le=0.9)
    learner: LearnerConfig = field_(LearnerConfig(), "learner group")
    checkpoint_every: int = field_(0, "steps between checkpoints (0 = end of each stage)", ge=0)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")


@dataclass
class RewardConfig:
    source: Literal["rm", "judge", "judge_pairwise", "function"] = field_(
        "rm", "where PPO rewards come from; judge_pairwise: the judge compares the samples of one prompt with "
        "each other (both orders, through a durable label store), a sample's reward is its mean win probability, "
        "and a sample whose comparisons all failed is left out of the update, never scored 0")
    rm_path: str | None = field_(None, "reward model checkpoint for source=rm")
    function: str | None = field_(None, "module:function(prompt, response) -> float for source=function")
    judge: JudgeConfig = field_(JudgeConfig(), "judge asked for a 1-10 score for source=judge")
    judge_actors: int = field_(1, "labeling-pool actors asked for scores for source=judge", ge=1)
    pairwise_schedule: Literal["all", "circular"] = field_(
        "all", "source=judge_pairwise: every pair of a prompt's samples (n(n-1)/2), or each sample against the "
        "next one round the group (n pairs)")
    pairwise_reward: Literal["win_rate", "bradley_terry"] = field_(
        "win_rate", "source=judge_pairwise: a sample's reward is its mean win probability against the samples "
        "it met, or its Bradley-Terry strength fitted to the group's soft outcomes (centred per group)")
    timeout_s: float = field_(600.0, "timeout of one scoring call", gt=0)
    batch_size: int = field_(16, "sequences per reward-model forward", ge=1)
    max_length: int = field_(512, "truncation length of the reward model", ge=8)
    dtype: Dtype = field_("fp32", "reward-model weights dtype")
    num_cpus: float = field_(1.0, "CPUs Ray reserves for the RewardScorer (also its torch threads)", ge=0)
    num_gpus: float = field_(0.0, "GPUs Ray reserves for the RewardScorer", ge=0)


@dataclass
class PPOConfig:
    steps: int = field_(20, "PPO iterations (rollout -> reward -> update -> sync)", ge=1)
    max_minutes: float | None = field_(None, "wall-clock budget of the loop: stop (checkpointed) after the "
                                       "step that crosses it (None: run all steps)", gt=0)
    prompts_per_step: int = field_(16, "prompts sampled per iteration", ge=1)
    ppo_epochs: int = field_(1, "passes over each rollout batch", ge=1)
    minibatches: int = field_(1, "minibatches per pass", ge=1)
    gamma: float = field_(1.0, "discount", ge=0, le=1)
    lam: float = field_(0.95, "GAE lambda", ge=0, le=1)
    clip_ratio: float = field_(0.2, "policy ratio clip", gt=0)
    value_clip: float = field_(0.2, "value clip", gt=0)
    vf_coef: float = field_(0.1, "value loss weight", ge=0)
    entropy_coef: float = field_(0.0, "entropy bonus weight", ge=0)
    kl_coef: float = field_(0.05, "initial KL penalty coefficient", ge=0)
    target_kl: float | None = field_(6.0, "adaptive KL target (None: fixed kl_coef)", gt=0)
    kl_horizon: int = field_(10000, "adaptive KL controller horizon", ge=1)
    whiten_advantages: bool = field_(True, "normalise advantages per batch")
    reward_scale: float = field_(1.0, "multiply rewards before the KL penalty", gt=0)
    critic: Literal["value_head", "separate"] = field_("value_head", "critic: a value head on the policy or a "
                                                       "separate model")
    critic_path: str | None = field_(None, "backbone of a separate critic (None: the policy's weights)")
    kl_estimator: Literal["k1", "k3"] = field_("k1", "per-token KL estimator in the reward penalty")
    reward_clip: float | None = field_(None, "clip scaled sequence scores to [-c, c] (None: no clip)", gt=0)
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = field_(
        "gae", "advantage estimator. gae: a critic (ppo.critic) and GAE; critic-free: grpo (reward minus its "
        "prompt group's mean, over the group's std), dr_grpo (minus the mean only; use loss_agg=seq_sum), rloo "
        "(minus the mean of the group's other samples), reinforce_pp (token-level KL in the reward, "
        "reward-to-go, whitened over the batch). The group ones need sampling.n >= 2; kl_coef is then a "
        "sequence-level penalty on the score")
    clip_ratio_high: float | None = field_(None, "upper ratio clip 1 + this (clip-higher, DAPO); None: "
                                           "clip_ratio both ways", gt=0)
    loss_agg: Literal["token_mean", "seq_mean", "seq_sum"] = field_(
        "token_mean", "policy loss over tokens: mean over every token of the batch; mean over sequences of each "
        "one's token mean (GRPO's paper); or each sequence's token sum over sampling.max_new_tokens, averaged "
        "(Dr. GRPO: no length bias)")
    kl_loss_coef: float = field_(0.0, "weight of a KL(pi || pi_ref) term (k3 estimator) in the loss, GRPO's "
                                 "way of staying near the reference (with it, set kl_coef to 0)", ge=0)
    async_steps: int = field_(0, "1: one-step-off asynchronous rollouts, the engines generate step t+1's samples "
                              "(with the weights of step t) while the learners train on step t's; 0: "
                              "generate, then train", ge=0, le=1)
    tis_cap: float | None = field_(2.0, "async_steps=1: truncated importance sampling, each token's policy loss "
                                   "weighted by min(pi_old / pi_rollout, tis_cap), pi_rollout the engine's "
                                   "logprob of the stale sample (None: no correction)", gt=0)
    dynamic_sampling: bool = field_(False, "group estimators: drop prompts whose samples all got the same "
                                    "reward (no gradient) and refill the batch with fresh prompts (DAPO)")
    max_refills: int = field_(2, "dynamic_sampling: generation rounds per step to refill dropped prompts; "
                              "after them the step trains on what it has", ge=0)

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"


@dataclass
class TrainPPOJob:
    prompts: str = field_("", "prompts file", required=PROMPTS_REQUIRED)
    run_dir: str = field_("runs/train-ppo", "checkpoints, metrics, effective config")
    policy: ModelConfig = field_(ModelConfig(), "policy (and reference) model")
    reward: RewardConfig = field_(RewardConfig(), "reward source")
    ppo: PPOConfig = field_(PPOConfig(), "PPO hyper-parameters")
    rollout: RolloutConfig = field_(RolloutConfig(), "rollout workers")
    sampling: SamplingConfig = field_(SamplingConfig(), "rollout sampling")
    learner: LearnerConfig = field_(LearnerConfig(), "learner group")
    sync: SyncConfig = field_(SyncConfig(), "learner -> rollout weight sync")
    checkpoint_every: int = field_(0, "iterations between checkpoints (0 = only at the end)", ge=0)
    gold: GoldConfig = field_(GoldConfig(), "optional gold scorer (gold.score_function): every step logs "
                              "gold_score_mean of its samples beside the proxy reward, showing over-optimisation")
    ray: RayConfig = field_(RayConfig(), "Ray cluster")

    def validate(self) -> None:
        if self.gold.function is not None or self.gold.file is not None:
            raise ConfigError("gold: train-ppo scores each sample alone: set gold.score_function")
        rows = self.ppo.prompts_per_step * self.sampling.n
        if rows < self.ppo.minibatches * self.learner.num_ranks:
            raise ConfigError(f"ppo.minibatches: {self.ppo.prompts_per_step} prompts x {self.sampling.n} samples "
                              f"= {rows} rows cannot fill {self.ppo.minibatches} minibatches on "
                              f"{self.learner.num_ranks} learner ranks")
        if self.reward.source == "judge_pairwise" and (self.sampling.n < 2 or self.reward.judge.protocol != "pairwise"):
            raise ConfigError("reward.source=judge_pairwise compares the samples of one prompt: it needs "
                              "sampling.n >= 2 and reward.judge.protocol=pairwise")
        if self.ppo.dynamic_sampling and self.ppo.advantage not in ("grpo", "dr_grpo", "rloo"):
            raise ConfigError(f"ppo.dynamic_sampling drops prompts whose samples tie, for the group estimators; "
                              f"ppo.advantage is {self.ppo.advantage}")
        if self.ppo.advantage in ("grpo", "dr_grpo", "rloo") and self.sampling.n < 2:
            raise ConfigError(f"sampling.n: {self.sampling.n}, but ppo.advantage={self.ppo.advantage} compares the "
                              "samples of one prompt with each other: set sampling.n >= 2")


@dataclass
class EvalJob:
    prompts: str = field_("", "held-out prompts (optional `reference` field for similarity)",
                          required="a held-out prompts file is required (prompts=path.jsonl)")
    policies: dict[str, str] = field_({}, "name -> checkpoint path/id of every model to compare")
    baseline: str | None = field_(None, "policy name the others are compared against (None: all pairs)")
    run_dir: str = field_("runs/eval", "results.json, report, plots")
    max_prompts: int | None = field_(None, "use at most this many prompts", ge=1)
    pool: FeedbackPoolConfig = field_(FeedbackPoolConfig(), "judge for pairwise comparisons")
    gold: GoldConfig = field_(GoldConfig(), "optional gold: win rates by the gold beside the judge's, and the "
                              "judge's agreement with it on the compared answers")
    rollout: RolloutConfig = field_(RolloutConfig(), "rollout workers")
    sampling: SamplingConfig = field_(SamplingConfig(temperature=0.0), "generation for eval (greedy)")
    bootstrap: int = field_(2000, "bootstrap resamples for CIs", ge=100)
    seed: int = field_(0, "seed of position randomisation and bootstrap", ge=0)
    embedding_model: str | None = field_("all-MiniLM-L6-v2", "sentence-embedding model for similarity "
                                         "to references (None: skip)")
    reward_model: str | None = field_(None, "optional RM checkpoint to score every answer")
    kl_reference: str | None = field_(None, "policy name whose model is the KL reference: per-answer "
                                      "sum of log pi(y|x) - log ref(y|x) (None: skip)")
    dtype: Literal["fp32", "bf16"] = field_("fp32", "weights dtype of the policies' engines")
    examples: int = field_(3, "best and worst examples kept per compared pair", ge=0)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")

    def validate(self) -> None:
        if len(self.policies) < 2:
            raise ConfigError("policies: name at least two policies to compare (policies.base=PATH ...)")
        for key, name in (("baseline", self.baseline), ("kl_reference", self.kl_reference)):
            if name is not None and name not in self.policies:
                raise ConfigError(f"{key}: {name!r} is not one of the policies {sorted(self.policies)}")


@dataclass
class DemoJob:
    pipeline: Literal["rlhf", "cai"] = field_(
        "rlhf", "rlhf: generate-pairs -> label -> train-rm -> train-ppo / train-dpo -> eval; cai (Constitutional AI): "
        "critique-revise -> train-sft -> generate-pairs -> label under a constitution -> train-dpo -> eval")
    run_dir: str = field_("runs/demo", "every stage writes below <run_dir>/<n>-<job>/ (pipeline=cai: below "
                          "<run_dir>/cai/)")
    policy: ModelConfig = field_(ModelConfig(path="smollm2", dtype="bf16", lora=LoraConfig(enabled=True)),
                                 "starting policy (trained with LoRA)")
    judge: JudgeConfig = field_(
        JudgeConfig(kind="local", model="smollm2", max_tokens=1, rubric="friendly", protocol="pointwise",
                    scale="contrast", pointwise_temperature=0.1),
        "AI judge for labels and eval (local = a vLLM engine inside the pool). Pointwise and contrastive: asked "
        "pairwise, SmolLM2-135M picks the first-shown answer almost always, and asked yes/no about one answer it "
        "agrees with the gold at chance; what it can do is read how likely an answer is after a warm and after a "
        "rude instruction, the two that made the pairs (as DLMA scores with its generation prompts): with "
        "scale=contrast and no contrast_prompts, the demo's judge contrasts the two instructions_b")
    gold: GoldConfig = field_(GoldConfig(score_function="rlaif_ray.eval.gold:vader_sentiment", margin=0.1),
                              "a gold that is not the judge: VADER sentiment, a lexicon scorer that shares nothing "
                              "with a language model, for the friendly-tone rubric")
    instructions_b: list[str] = field_(
        ["Please answer in a very warm, kind and cheerful way.",
         "Answer rudely, like a grumpy, annoyed person who hates being asked."],
        "response_b of every pair comes from the policy with one of these appended to the prompt (cycled), so "
        "the pairs differ in tone: two samples of one small policy differ too little for any judge to rank")
    time_budget_min: float = field_(15.0, "wall-clock budget; PPO gets half of what is left after train-rm, "
                                    "the rest is for DPO and eval", gt=0)
    pair_prompts: int = field_(96, "training prompts sampled into pairs by generate-pairs", ge=4)
    eval_prompts: int = field_(48, "held-out prompts in the final evaluation", ge=4)
    sampling: SamplingConfig = field_(SamplingConfig(temperature=0.7, max_new_tokens=48),
                                      "generation for pairs and PPO (eval is greedy)")
    rollout: RolloutConfig = field_(RolloutConfig(max_model_len=512), "rollout workers of every stage")
    rm_learner: LearnerConfig = field_(LearnerConfig(lr=2e-4, dtype="bf16", micro_batch_size=8, max_length=256),
                                       "learner group of train-rm")
    rm_epochs: int = field_(4, "reward-model epochs", ge=1)
    rm_val_fraction: float = field_(0.25, "pairs held out of train-rm; the gold labels of those it decides are the "
                                    "RM's gold accuracy set", ge=0.05, le=0.5)
    learner: LearnerConfig = field_(LearnerConfig(lr=1e-4, dtype="bf16", micro_batch_size=4, max_length=256),
                                    "learner group of train-ppo and train-dpo")
    ppo: PPOConfig = field_(PPOConfig(steps=8, prompts_per_step=16), "PPO; steps are also capped by the budget")
    dpo: DPOStage = field_(DPOStage(name="ai", epochs=4, lr=2e-4, beta=0.1, loss="sigmoid", soft_labels=True),
                           "the DPO stage on the AI preferences (its data is filled in by the demo)")
    sync: SyncConfig = field_(SyncConfig(), "weight sync of train-ppo")
    constitution: str = field_("tone", "pipeline=cai: the constitution of critique-revise and of the labels "
                               "('tone': the shipped tone constitution, whose gold is VADER)")
    cai_prompts: int = field_(48, "pipeline=cai: prompts the policy answers and the critic revises", ge=4)
    sft_epochs: int = field_(2, "pipeline=cai: train-sft epochs on the revisions", ge=1)
    cai_instructions: list[str] = field_(
        ["Answer rudely, like a grumpy, annoyed person who hates being asked.", ""],
        "pipeline=cai: appended (cycled; '' = none) to the prompts the policy answers in critique-revise, as red-team "
        "prompts elicit answers worth revising; the SFT rows keep the plain prompt")
    seed: int = field_(0, "seed of eval position randomisation and bootstrap", ge=0)
    ray: RayConfig = field_(RayConfig(), "Ray cluster")

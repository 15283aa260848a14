"""HTTP judges: Anthropic Messages (`anthropic.AsyncAnthropic`) and OpenAI-compatible chat completions
(`openai.AsyncOpenAI`: a vLLM server, Ollama's /v1, llama.cpp). SDK retries are off; ours (retry.py)
apply, and every attempt first takes a rate-limiter token. Keys come only from the environment."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
from typing import Any

from ..config import JudgeConfig, RetryConfig
from .constitution import task_rubric
from .cost import cost_usd, prices_of
from .judges import Judge
from .parsing import (
    ParseError,
    answer_token,
    p_from_logprobs,
    parse_letter,
    parse_score,
    rationale_of,
    score_from_logprobs,
    yes_no_from_logprobs,
)
from .prompts import (
    WRITE_ANSWER,
    pair_answer,
    pair_system,
    pair_user,
    reask_user,
    score_answer,
    score_system,
    score_user,
)
from .ratelimit import RateLimiter
from .retry import GaveUp, with_retry
from .rubrics import load_rubric
from .types import ScoreResult, Task, Usage, Verdict, WriteTask, Writing

COT_MIN_TOKENS = 512
DEFAULT_MAX_TOKENS = 64  # room for a short sentence before "Verdict: A"; only generated tokens are billed
VERDICTS, SCORES, YES_NO = ("A", "B"), tuple(str(i) for i in range(1, 11)), ("Yes", "No")  # answers a judge may give


def max_tokens_of(cfg: JudgeConfig) -> int:
    """The answer budget a judge sends: `max_tokens`, else 64 (512 with CoT); CoT never below 512."""
    budget = cfg.max_tokens or (COT_MIN_TOKENS if cfg.cot else DEFAULT_MAX_TOKENS)
    return max(budget, COT_MIN_TOKENS) if cfg.cot else budget


def estimate_tokens(*texts: str) -> int:
    return sum(len(t) for t in texts) // 4 + 1


def _aiohttp_client(sdk):
    """The SDK's aiohttp transport: with ~100 requests in flight the default httpcore pool spends
    O(connections) per request (measured here: 52 vs 99 req/s at 128 in flight, 5.7 vs 2.2 ms CPU each)."""
    try:
        return sdk.DefaultAioHttpClient()
    except (AttributeError, RuntimeError):  # older SDK or no aiohttp: the default transport
        return None


class _APIJudge(Judge):
    """Shared call path: rate-limit slot, SDK call with raw headers, our retry, a re-ask when the answer
    holds no verdict, and every billed attempt in the answer's cost; failure as a value."""

    caches_system = False  # the system prefix is billed as a prompt-cache read (estimates of lost answers)
    tally = None  # an InflightTally: attempts in flight on disk, so a kill's cut-off calls reach the ledger

    def __init__(self, cfg: JudgeConfig, retry: RetryConfig, limiter: RateLimiter | None):
        super().__init__(cfg)
        self.retry, self.limiter = retry, limiter
        self.rubric = load_rubric(cfg.rubric)
        self.max_tokens = max_tokens_of(cfg)
        self.answer_format: str | None = None  # set by judges that constrain their answers
        self._output = [0, 0]  # output tokens and answers delivered: a lost answer's output estimate
        self._cache_written = False  # a delivered (or estimated) answer has written the system prefix cache

    async def _call(self, create, params: dict, est_input: int):
        """(response, attempts, lost): the wait for a slot is outside each attempt's timeout."""
        async def send():
            raw = await create(**params)
            if self.limiter is not None:
                self.limiter.observe(raw.headers)
            parsed = raw.parse()  # the async SDKs return a coroutine; a malformed body raises here (retried)
            return await parsed if inspect.isawaitable(parsed) else parsed

        out = params.get("max_tokens", self.max_tokens)
        acquire = None if self.limiter is None else lambda: self.limiter.acquire(est_input, out)
        return await with_retry(send, self.retry, acquire, self.limiter, tally=self.tally)

    def _lost_usage(self, system: str, user: str, n: int) -> Usage:
        """Estimated tokens of `n` billed attempts whose answer never arrived."""
        if n == 0:
            return Usage()
        out = round(self._output[0] / self._output[1]) if self._output[1] else 1
        sys_t, user_t = estimate_tokens(system), estimate_tokens(user)
        if not self.caches_system:
            return Usage(input=n * (user_t + sys_t), output=n * out)
        writes = 0 if self._cache_written else 1  # the first call of a prefix writes the cache, later ones read
        self._cache_written = True
        return Usage(input=n * user_t, output=n * out, cache_write=writes * sys_t, cache_read=(n - writes) * sys_t)

    async def _ask(self, system: str, user: str, answers: tuple[str, ...], answer_line: str, read,
                   max_tokens: int | None = None):
        """Ask, and re-ask with a stricter format reminder (up to `reask` times) while the answer holds no
        verdict (`answers` empty: free text, any non-empty answer). Returns (value or None, the JudgeOutput
        fields, attempts): cost covers every billed call."""
        usage, lost_usage, attempts, reasks = Usage(), Usage(), 0, 0
        value, text, error = None, "", None
        for k in range(self.cfg.reask + 1):
            asked = user if k == 0 else reask_user(user, answer_line)
            reasks += k > 0
            try:
                response, n, lost = await self._request(system, asked, answers, max_tokens or self.max_tokens)
            except GaveUp as e:
                attempts += e.attempts
                lost_usage.add(self._lost_usage(system, asked, e.lost))
                error = str(e)
                break
            attempts += n
            lost_usage.add(self._lost_usage(system, asked, lost))
            got = self._usage(response)
            usage.add(got)
            self._cache_written |= got.cache_write > 0
            self._output[0] += got.output
            self._output[1] += 1
            text = self._text(response)
            try:
                value, error = read(response, text), None
                break
            except ParseError as e:
                error = f"ParseError: {e}"
        prices = prices_of(self.cfg)
        estimated = cost_usd(lost_usage, prices)
        fields = {"raw": text, "rationale": rationale_in(text, self.answer_format), "usage": usage, "error": error, "reasks": reasks,
                  "cost_usd": cost_usd(usage, prices) + estimated, "estimated_usd": estimated,
                  "answer_format": self.answer_format}
        return value, fields, attempts

    async def judge(self, task: Task) -> Verdict:
        system = pair_system(task_rubric(self.rubric, self.cfg, task), self.cfg.cot)
        user = pair_user(task.prompt, task.first, task.second)
        value, fields, attempts = await self._ask(system, user, VERDICTS, pair_answer(self.cfg.cot), self._p_first)
        return Verdict(value, attempts=attempts, **fields)

    async def score(self, prompt: Any, response_text: Any, rubric: str | None = None) -> ScoreResult:
        scale = self.cfg.scale
        system, user = score_system(rubric or self.rubric, self.cfg.cot, scale), score_user(prompt, response_text, scale)
        value, fields, attempts = await self._ask(system, user, YES_NO if scale == "yes_no" else SCORES,
                                                  score_answer(self.cfg.cot, scale), self._score)
        return ScoreResult(value, scale=scale, attempts=attempts, **fields)

    async def write(self, task: WriteTask) -> Writing:
        value, fields, attempts = await self._ask(task.system, task.user, (), WRITE_ANSWER, _written,
                                                  task.max_tokens)
        fields["rationale"] = None  # free text is all answer
        return Writing(value, attempts=attempts, **fields)


class AnthropicJudge(_APIJudge):
    """Claude: rubric in a cached system block, pair in the user turn; verdict parsed from text (no
    logprobs), so soft labels come from both orders and repeated samples."""

    def __init__(self, cfg: JudgeConfig, retry: RetryConfig, limiter: RateLimiter | None):
        super().__init__(cfg, retry, limiter)
        import anthropic

        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise RuntimeError("ANTHROPIC_API_KEY is not set: export it in the environment (never in a config)")
        self.caches_system = cfg.prompt_caching
        self.answer_format = "json_schema" if cfg.constrain == "json_schema" else "none"
        self.client = anthropic.AsyncAnthropic(api_key=key, base_url=cfg.base_url, max_retries=0,
                                               timeout=retry.timeout_s + 5, http_client=_aiohttp_client(anthropic))

    def params(self, system: str, user: str, max_tokens: int | None = None, answers: tuple[str, ...] = ()) -> dict:
        """The Messages request body; with `answers` and answer_format json_schema, Claude's structured output
        ({"rationale": ..., "answer": ...} with CoT, {"answer": ...} without)."""
        block: dict[str, Any] = {"type": "text", "text": system}
        if self.cfg.prompt_caching:
            block["cache_control"] = {"type": "ephemeral", **({"ttl": "1h"} if self.cfg.cache_ttl == "1h" else {})}
        body = {"model": self.cfg.model, "max_tokens": max_tokens or self.max_tokens, "system": [block],
                "messages": [{"role": "user", "content": user}]}
        if self.cfg.temperature > 0:  # newer Claude models reject sampling knobs: send only when asked for
            body["temperature"] = self.cfg.temperature
        if answers and self.answer_format == "json_schema":
            body["output_config"] = {"format": {"type": "json_schema", "schema": answer_schema(answers, self.cfg.cot)}}
        return body

    async def _request(self, system: str, user: str, answers: tuple[str, ...], max_tokens: int):
        params = self.params(system, user, max_tokens, answers)
        if "temperature" in params:  # the 2.x SDK has no temperature argument; the HTTP API may accept it
            params["extra_body"] = {"temperature": params.pop("temperature")}
        try:
            return await self._call(self.client.messages.with_raw_response.create, params,
                                    estimate_tokens(system, user))
        except GaveUp as e:  # a model without structured outputs refuses the schema: the text verdict, from now on
            if "output_config" not in params or getattr(e.__cause__, "status_code", None) != 400:
                raise
            self.answer_format = "none"
            return await self._request(system, user, answers, max_tokens)

    @staticmethod
    def _text(response) -> str:
        return "".join(getattr(b, "text", "") for b in response.content)

    @staticmethod
    def _usage(response) -> Usage:
        u = response.usage
        return Usage(input=u.input_tokens or 0, output=u.output_tokens or 0,
                     cache_write=getattr(u, "cache_creation_input_tokens", 0) or 0,
                     cache_read=getattr(u, "cache_read_input_tokens", 0) or 0)

    def _p_first(self, response, text: str) -> float:
        return 1.0 if parse_letter(answer_in(text, self.answer_format)) == "A" else 0.0

    def _score(self, response, text: str) -> float:
        return parse_score(answer_in(text, self.answer_format))

    async def close(self) -> None:
        await self.client.close()


class OpenAIJudge(_APIJudge):
    """OpenAI-compatible server (vLLM, Ollama /v1, llama.cpp, OpenAI): the soft label is the verdict
    position's distribution from `top_logprobs` (the RLAIF paper's method), whatever token was sampled
    there; the answer is constrained to the verdict where the server can (`JudgeConfig.constrain`); the
    text verdict is the fallback when the server returns no logprobs."""

    def __init__(self, cfg: JudgeConfig, retry: RetryConfig, limiter: RateLimiter | None):
        super().__init__(cfg, retry, limiter)
        import openai

        # Local servers (vLLM, Ollama, llama.cpp) accept any key; the SDK insists on one being set.
        key = os.environ.get("OPENAI_API_KEY") or "no-key"
        self.client = openai.AsyncOpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=retry.timeout_s + 5,
                                         http_client=_aiohttp_client(openai))
        self.answer_format = "none" if cfg.cot else None if cfg.constrain == "auto" else cfg.constrain
        self._probing: asyncio.Lock | None = None

    def _params(self, system: str, user: str, answers: tuple[str, ...], fmt: str, max_tokens: int | None = None) -> dict:
        params = {"model": self.cfg.model, "max_tokens": max_tokens or self.max_tokens,
                  "temperature": self.cfg.temperature,
                  "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        if not answers:  # free text: no verdict position to read, nothing to constrain
            return params
        params.update(logprobs=True, top_logprobs=20)
        if fmt == "choice":  # vLLM's structured outputs
            params["extra_body"] = {"structured_outputs": {"choice": list(answers)}}
        elif fmt == "json_schema":
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": True, "schema": answer_schema(answers, cot=False)}}
            params["max_tokens"] = max(params["max_tokens"], 16)  # {"answer": "A"}
        return params

    async def _request(self, system: str, user: str, answers: tuple[str, ...], max_tokens: int):
        if not answers:
            return await self._call(self.client.chat.completions.with_raw_response.create,
                                    self._params(system, user, (), "none", max_tokens), estimate_tokens(system, user))
        if self.answer_format is None:
            self._probing = self._probing or asyncio.Lock()
            async with self._probing:  # the first calls of an actor wait for one probe
                if self.answer_format is None:
                    self.answer_format = await self._probe()
        return await self._call(self.client.chat.completions.with_raw_response.create,
                                self._params(system, user, answers, self.answer_format, max_tokens),
                                estimate_tokens(system, user))

    async def _probe(self) -> str:
        """The most specific constraint this server obeys: a request that would not answer a letter
        unconstrained ("Say hello.") must come back as one. A server that rejects or ignores it: the next."""
        for fmt in ("choice", "json_schema"):
            params = self._params("Answer the question.", "Say hello.", VERDICTS, fmt)
            try:
                response, _, _ = await self._call(self.client.chat.completions.with_raw_response.create, params, 8)
            except GaveUp:
                continue
            if answer_in(self._text(response), fmt) in VERDICTS:
                return fmt
        return "none"

    @staticmethod
    def _text(response) -> str:
        return response.choices[0].message.content or ""

    @staticmethod
    def _usage(response) -> Usage:
        u = response.usage
        if u is None:
            return Usage()
        details = getattr(u, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
        return Usage(input=(u.prompt_tokens or 0) - cached, output=u.completion_tokens or 0, cache_read=cached)

    def _top(self, response, answers: tuple[str, ...], label: str) -> dict[str, float] | None:
        """top_logprobs of the answer position: the first generated token (after `label:` with CoT; the
        value inside the JSON object with json_schema), else the last position that sampled an answer.
        A position counts only when some answer is among its top tokens."""
        answers = tuple(a.upper() for a in answers)  # answer_token upper-cases
        lp = response.choices[0].logprobs
        if lp is None or not lp.content:
            return None
        tokens = lp.content
        if self.cfg.cot:
            text, first = "", []
            for tok in tokens:
                if re.search(rf"{label}\s*[:\-]?\s*\**\s*$", text, re.I) and tok.token.strip():
                    first = [tok]
                    break
                text += tok.token
        elif self.answer_format == "json_schema":
            first = [t for t in tokens if answer_token(t.token) in answers][:1]
        else:
            first = tokens[:1]
        sampled = [t for t in reversed(tokens) if answer_token(t.token) in answers]
        for tok in first + sampled:
            top = {t.token: t.logprob for t in tok.top_logprobs} or {tok.token: tok.logprob}
            if any(answer_token(t) in answers for t in top):
                return top
        return None

    def _p_first(self, response, text: str) -> float:
        top = self._top(response, VERDICTS, "verdict")
        if top is None:
            return 1.0 if parse_letter(answer_in(text, self.answer_format)) == "A" else 0.0
        return p_from_logprobs(top)

    def _score(self, response, text: str) -> float:
        if self.cfg.scale == "yes_no":
            top = self._top(response, YES_NO, "answer")
            if top is None:
                raise ParseError(f"scale=yes_no needs logprobs of Yes/No; the server gave none (answer {text[:80]!r})")
            return yes_no_from_logprobs(top)
        top = self._top(response, SCORES, "score")
        if top is None:
            return parse_score(answer_in(text, self.answer_format))
        return score_from_logprobs(top)

    async def close(self) -> None:
        await self.client.close()


def _written(_response, text: str) -> str:
    """A free-text answer: any non-empty text (an empty one is re-asked)."""
    if not text.strip():
        raise ParseError("empty answer")
    return text.strip()


def answer_schema(answers: tuple[str, ...], cot: bool) -> dict:
    """JSON schema of a structured verdict: {"answer": one of `answers`}, after a "rationale" with CoT."""
    props = {"rationale": {"type": "string"}} if cot else {}
    props["answer"] = {"type": "string", "enum": list(answers)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def rationale_in(text: str, fmt: str | None) -> str | None:
    """The rationale of an answer: the "rationale" of a json_schema reply, else the <rationale> tag's text."""
    if fmt == "json_schema":
        try:
            return json.loads(text).get("rationale")
        except (ValueError, AttributeError):
            pass
    return rationale_of(text)


def answer_in(text: str, fmt: str | None) -> str:
    """The answer inside a json_schema reply ({"answer": "A"} -> "A"); other text (the parser's fallback) as
    it is."""
    if fmt == "json_schema":
        try:
            return str(json.loads(text).get("answer", text))
        except (ValueError, AttributeError):
            return text
    return text.strip()

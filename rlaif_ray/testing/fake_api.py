"""A loopback fake of the Anthropic Messages + Message Batches API and OpenAI chat completions (with
logprobs): a real HTTP server on 127.0.0.1 that the real SDKs talk to through `base_url`.

It is the only stand-in the tests use. It judges deterministically from content: every response text has a
quality `q(text)` in [0, 1) (a hash), and the first-shown response wins with probability
`p_first(first, second) = sigmoid(6 (q1 - q2) + position_bias)`. Anthropic answers the argmax letter
(a sampled letter at temperature > 0); OpenAI answers with `top_logprobs` whose renormalised A/B mass is
exactly `p_first`. Pointwise prompts (`<response>...</response>`) get `score(text) = 1 + round(9 q)`, or,
when they ask for Yes or No, P(Yes) = `yes_probability(text)` (OpenAI: as top_logprobs; Anthropic: the argmax).

It bills like a provider: every request it answers with a 200 is billed per request body, whether or not
the client was still there to read it (`abandoned`) or could parse it (`malformed`); a body billed again
after one clean delivery shows up as `repaid_after_delivery` (`repaid` counts every second billing).
`billed_usage` sums the tokens billed, by kind. Faults hit the first `times` attempts of a `fraction` of
request bodies (or of the bodies whose hash falls in `range` [lo, hi), to give fault classes disjoint
slices):
- refusals: 429 (+retry-after, with the usual rate-limit headers), 429_quota (a spend limit), 529
  overloaded, 500;
- transport: slow (a delay), stall (a delay, then a billed answer: abandoned if the client gave up),
  timeout (a hang, then a dropped connection, not billed), reset (dropped connection, not billed),
  malformed (a 200 with a truncated body, billed);
- answers without a verdict (billed, 200): no_verdict ("Both are fine."), empty (no content), verbose (a
  sentence of prose before the verdict, cut at `max_tokens` like a real model: 16 tokens cut it off);
- errored/expired batch items.
`requests_per_min` is enforced over short intervals (a one-second bucket, as the Anthropic docs warn),
with `anthropic-ratelimit-requests-*` headers on every answer and on its 429s. Batch results always come
back shuffled.

    server = FakeAPI(latency_s=0.0).start()        # in a thread; server.base_url, server.stats()
    python -m rlaif_ray.testing.fake_api --port 8123 --latency 1.0 --rpm 4000
Control over HTTP: GET /_stats, POST /_control {"faults": [...], "latency_s": .., "reset": true}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

FAULT_KINDS = ("429", "429_quota", "529", "500", "slow", "stall", "timeout", "malformed", "reset", "no_verdict", "empty",
               "verbose", "batch_errored", "batch_expired")
ANSWER_FAULTS = ("no_verdict", "empty", "verbose")
USAGE_KINDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def billed_usd(stats: dict[str, Any], price_per_mtok: dict[str, float]) -> float:
    """Dollars of what the fake billed (its `stats()["billed_usage"]`) at a price table."""
    from ..feedback.cost import cost_usd
    from ..feedback.types import Usage

    u = stats["billed_usage"]
    return cost_usd(Usage(input=u.get("input_tokens", 0), output=u.get("output_tokens", 0),
                          cache_write=u.get("cache_creation_input_tokens", 0),
                          cache_read=u.get("cache_read_input_tokens", 0)), price_per_mtok)


def quality(text: str) -> float:
    """Deterministic 'quality' of a response in [0, 1)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def p_first(first: str, second: str, position_bias: float = 0.0) -> float:
    """P(the first-shown response is better) under the fake judge."""
    return 1.0 / (1.0 + math.exp(-(6.0 * (quality(first) - quality(second)) + position_bias)))


def score_of(text: str) -> int:
    """Pointwise 1-10 score under the fake judge."""
    return 1 + round(9 * quality(text))


def yes_probability(text: str) -> float:
    """P(Yes) of a yes/no pointwise question under the fake judge, in [0.02, 0.98)."""
    return 0.02 + 0.96 * quality(text)


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _answer_fault(text: str, label: str, answer: str, fault: str | None, max_tokens: int) -> tuple[str, str]:
    """(text, stop_reason) of an answer with no verdict: prose, nothing, or a sentence before the verdict
    that `max_tokens` (4 characters a token) may cut off."""
    if fault == "no_verdict":
        return "Both are fine.", "end_turn"
    if fault == "empty":
        return "", "end_turn"
    if fault == "verbose":
        text = (f"After weighing both, I think response {answer.lower()[:1]} reads a little better and answers "
                f"more of the question.\n{label}: {answer}")
        if len(text) > 4 * max_tokens:
            return text[:4 * max_tokens], "max_tokens"
    return text, "end_turn"


def _written(kind: str, response: str, request: str) -> str:
    """The fake's critique of a response, or its revision: deterministic in what it was asked."""
    if kind == "critique":
        return (f"The response could do better on this: {request.split('.')[0].lower()}. "
                f"It should say more plainly what it means ({len(response.split())} words now).")
    return f"{response.strip()} I hope this helps, and thank you for asking."


def _cut(text: str, max_tokens: int) -> tuple[str, str]:
    """(text, stop_reason) with the text cut at `max_tokens` (4 characters a token)."""
    return (text[:4 * max_tokens], "max_tokens") if len(text) > 4 * max_tokens else (text, "end_turn")


def _uniform(*parts: str) -> float:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) / 2**32


def _tag(text: str, name: str) -> str | None:
    """Content of the last <name>...</name> (instructions may mention the bare tag earlier)."""
    end = text.rfind(f"</{name}>")
    start = text.rfind(f"<{name}>", 0, end)
    if end < 0 or start < 0:
        return None
    inner = text[start + len(name) + 2:end]
    inner = inner[1:] if inner.startswith("\n") else inner
    return inner[:-1] if inner.endswith("\n") else inner


class FakeAPI:
    """The server state, handlers and counters. `start()` serves it from a daemon thread."""

    def __init__(self, api_key: str | None = None, latency_s: float = 0.0, jitter: float = 0.0,
                 requests_per_min: float = 0.0, position_bias: float = 0.0, batch_latency_s: float = 0.3,
                 faults: list[dict] | None = None, port: int = 0, seed: int = 0, structured_outputs: bool = True):
        self.api_key, self.port = api_key, port
        self.structured_outputs = structured_outputs  # False: a model that refuses output_config (400)
        self.latency_s, self.jitter, self.position_bias = latency_s, jitter, position_bias
        self.requests_per_min, self.batch_latency_s = requests_per_min, batch_latency_s
        self.rng = random.Random(seed)
        self.faults = list(faults or [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    # ---- state -------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.counts: Counter = Counter()      # http requests by endpoint/outcome
        self.billed: Counter = Counter()      # body hash -> times billed
        self.delivered: Counter = Counter()   # body hash -> clean answers written to a client still there
        self.repaid_after_delivery = 0
        self.billed_usage: Counter = Counter()  # tokens billed, by usage kind
        self.t0: float | None = None          # first request (for "after the first minute" counts)
        self.events: list[tuple[float, str]] = []  # (seconds since t0, "billed" | "429-rate")
        self.attempts: Counter = Counter()    # (endpoint, body hash) -> attempts seen
        self.batch_submitted: Counter = Counter()  # params hash -> times submitted inside a batch
        self.batch_duplicates: Counter = Counter()  # params hash -> submitted while answered or still queued
        self.batches: dict[str, dict] = {}
        self.auth_schemes: Counter = Counter()
        self._cache: set[str] = set()  # system prefixes marked for prompt caching
        self.in_flight = self.max_in_flight = 0
        self._bucket, self._bucket_t = None, time.monotonic()

    def stats(self) -> dict[str, Any]:
        late = Counter(kind for t, kind in self.events if t >= 60.0)
        return {"requests": dict(self.counts), "billable": sum(self.billed.values()),
                "repaid": sum(c - 1 for c in self.billed.values() if c > 1),
                "repaid_after_delivery": self.repaid_after_delivery, "billed_usage": dict(self.billed_usage),
                "abandoned": self.counts.get("abandoned", 0), "billed_after_60s": late["billed"],
                "rate_429_after_60s": late["429-rate"],
                "batch_requests": sum(self.batch_submitted.values()),
                "batch_duplicates": sum(self.batch_duplicates.values()),
                "batches": len(self.batches), "auth": dict(self.auth_schemes), "max_in_flight": self.max_in_flight}

    # ---- helpers -----------------------------------------------------------------------------------
    def _fault(self, endpoint: str, key: str, body: dict | None = None) -> dict | None:
        """The first rule that hits this attempt. `unless`: a text whose presence in the body spares it (a
        model that complies once reminded of the format); `when`: a text the body must hold to be hit."""
        n = self.attempts[(endpoint, key)]
        for rule in self.faults:
            if rule.get("endpoint", "any") not in ("any", endpoint):
                continue
            if rule.get("unless") and body is not None and rule["unless"] in json.dumps(body):
                continue
            if rule.get("when") and (body is None or rule["when"] not in json.dumps(body)):
                continue
            lo, hi = rule.get("range", (0.0, rule.get("fraction", 1.0)))
            u = _uniform(key) if "range" in rule else _uniform(key, rule["kind"])
            if lo <= u < hi and n <= rule.get("times", 1):
                return rule
        return None

    def _rate_level(self) -> None:
        rate = self.requests_per_min / 60.0
        cap = max(1.0, rate)
        now = time.monotonic()
        self._bucket = min(cap, (cap if self._bucket is None else self._bucket) + (now - self._bucket_t) * rate)
        self._bucket_t = now

    def _rate_limited(self) -> float:
        """Seconds until a request token is free (0: take one now). Bucket holds one second of budget."""
        if not self.requests_per_min:
            return 0.0
        rate = self.requests_per_min / 60.0
        self._rate_level()
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return 0.0
        return (1.0 - self._bucket) / rate

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.requests_per_min:
            return {}
        self._rate_level()
        level = self._bucket or 0.0
        # Like the real API: when the budget is spent, `reset` says when the next request is allowed.
        refill_s = max(0.0, 1.0 - level) / (self.requests_per_min / 60.0)
        reset = (datetime.now(UTC) + timedelta(seconds=refill_s)).isoformat().replace("+00:00", "Z")
        remaining = int(level)
        return {"anthropic-ratelimit-requests-limit": str(int(self.requests_per_min)),
                "anthropic-ratelimit-requests-remaining": str(remaining),
                "anthropic-ratelimit-requests-reset": reset}

    def _latency(self) -> float:
        return max(0.0, self.latency_s * (1 + self.rng.uniform(-self.jitter, self.jitter)))

    @staticmethod
    def _key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]

    def _check_auth(self, request) -> bool:
        key = request.headers.get("x-api-key")
        scheme = "x-api-key"
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            key, scheme = request.headers["Authorization"][7:], "bearer"
        self.auth_schemes[scheme if key else "none"] += 1
        return self.api_key is None or key == self.api_key

    # ---- the judge ---------------------------------------------------------------------------------
    def _judge_text(self, text: str) -> dict:
        """What the fake judge sees in a prompt: kind, p_first or score, cot."""
        cot = "<rationale>" in text
        for kind in ("revision", "critique"):  # critique-revise: free text about one response
            request = _tag(text, f"{kind}_request")
            if request is not None:
                return {"kind": kind, "text": _written(kind, _tag(text, "response") or "", request)}
        single = _tag(text, "response")
        if single is not None and "Yes or No" in text:
            return {"kind": "yes_no", "p": yes_probability(single), "cot": cot}
        if single is not None:
            return {"kind": "score", "score": score_of(single), "cot": cot}
        a, b = _tag(text, "response_A"), _tag(text, "response_B")
        if a is None or b is None:
            return {"kind": "unknown", "p": 0.5, "cot": cot}
        return {"kind": "pair", "p": p_first(a, b, self.position_bias), "cot": cot}

    def _anthropic_message(self, params: dict, answer_fault: str | None = None, sample_u: float | None = None) -> dict:
        system = params.get("system") or ""
        system_text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system)
        msgs = params.get("messages", [])
        user = "".join(m["content"] if isinstance(m["content"], str) else
                       "".join(b.get("text", "") for b in m["content"]) for m in msgs)
        seen = self._judge_text(system_text + user)
        if seen["kind"] in ("critique", "revision"):
            text, stop = _cut("" if answer_fault == "empty" else seen["text"], int(params.get("max_tokens", 1024)))
            return self._anthropic_reply(params, system, system_text, user, text, stop)
        if seen["kind"] == "score":
            answer = str(seen["score"])
        else:
            u = sample_u if sample_u is not None else self.rng.random()
            first = seen["p"] >= 0.5 if not params.get("temperature") else u < seen["p"]
            answer = ("Yes" if first else "No") if seen["kind"] == "yes_no" else "A" if first else "B"
        label = {"score": "Score", "yes_no": "Answer"}.get(seen["kind"], "Verdict")
        rationale = "The fake judge compared the responses."
        text = f"<rationale>{rationale}</rationale>\n{label}: {answer}" if seen["cot"] else answer
        if (params.get("output_config") or {}).get("format"):  # structured output: the schema's JSON, always
            text = json.dumps({"rationale": rationale, "answer": answer} if seen["cot"] else {"answer": answer})
            answer_fault = answer_fault if answer_fault == "empty" else None
        text, stop = _answer_fault(text, label, answer, answer_fault, int(params.get("max_tokens", 1024)))
        return self._anthropic_reply(params, system, system_text, user, text, stop)

    def _anthropic_reply(self, params: dict, system, system_text: str, user: str, text: str, stop: str) -> dict:
        cached = isinstance(system, list) and any("cache_control" in b for b in system)
        sys_tokens = _tokens(system_text)
        cache_hit = cached and system_text in self._cache
        if cached:
            self._cache.add(system_text)
        usage = {"input_tokens": _tokens(user) + (0 if cached else sys_tokens), "output_tokens": _tokens(text),
                 "cache_creation_input_tokens": sys_tokens if cached and not cache_hit else 0,
                 "cache_read_input_tokens": sys_tokens if cache_hit else 0}
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": params.get("model", "fake"), "content": [{"type": "text", "text": text}] if text else [],
                "stop_reason": stop, "stop_sequence": None, "usage": usage}

    def _openai_completion(self, params: dict, answer_fault: str | None = None) -> dict:
        text = "".join(m["content"] if isinstance(m["content"], str) else
                       "".join(p.get("text", "") for p in m["content"]) for m in params.get("messages", []))
        seen = self._judge_text(text)
        if seen["kind"] in ("critique", "revision"):
            out, stop = _cut("" if answer_fault == "empty" else seen["text"], int(params.get("max_tokens") or 1024))
            return {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion",
                    "created": int(time.time()), "model": params.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "logprobs": None,
                                 "finish_reason": "length" if stop == "max_tokens" else "stop"}],
                    "usage": {"prompt_tokens": _tokens(text), "completion_tokens": _tokens(out),
                              "total_tokens": _tokens(text) + _tokens(out)}}
        if seen["kind"] == "score":
            s = seen["score"]
            dist = {str(v): w for v, w in ((s, 0.6), (s - 1, 0.2), (s + 1, 0.2)) if 1 <= v <= 10}
            norm = sum(dist.values())
            top = [(t, math.log(0.95 * w / norm)) for t, w in dist.items()] + [("The", math.log(0.05))]
        elif seen["kind"] == "yes_no":
            p = seen["p"]
            top = [("Yes", math.log(0.95 * p)), ("No", math.log(0.95 * (1 - p))), ("The", math.log(0.05))]
        else:
            p = seen["p"]
            top = [("A", math.log(0.9 * p)), ("B", math.log(0.9 * (1 - p))), ("Tie", math.log(0.1))]
        top.sort(key=lambda t: -t[1])
        n_top = min(int(params.get("top_logprobs") or 0), 20)
        verdict_tok = {"token": top[0][0], "logprob": top[0][1], "bytes": list(top[0][0].encode()),
                       "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top[:n_top]]}
        label = {"score": "Score", "yes_no": "Answer"}.get(seen["kind"], "Verdict")
        prefix = ["<rationale>", "fake", "</rationale>", "\n", label, ":", " "] if seen["cot"] else []
        content = [{"token": t, "logprob": 0.0, "bytes": list(t.encode()),
                    "top_logprobs": [{"token": t, "logprob": 0.0, "bytes": list(t.encode())}]} for t in prefix]
        content.append(verdict_tok)
        out_text = "".join(prefix) + top[0][0]
        if answer_fault:  # an answer with no verdict token anywhere
            out_text = "" if answer_fault == "empty" else "Both are fine."
            content = [{"token": t, "logprob": 0.0, "bytes": list(t.encode()),
                        "top_logprobs": [{"token": t, "logprob": 0.0, "bytes": list(t.encode())}]}
                       for t in out_text.split(" ") if t]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion", "created": int(time.time()),
                "model": params.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out_text},
                             "logprobs": {"content": content} if params.get("logprobs") else None,
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": _tokens(text), "completion_tokens": len(content),
                          "total_tokens": _tokens(text) + len(content)}}

    # ---- HTTP --------------------------------------------------------------------------------------
    async def _serve_one(self, request, endpoint: str, build):
        from aiohttp import web

        self.counts[endpoint] += 1
        if not self._check_auth(request):
            self.counts["401"] += 1
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                 "message": "invalid x-api-key"}}, status=401)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                                                 "message": "body is not JSON"}}, status=400)
        if "output_config" in body and not self.structured_outputs:
            return self._error(400, "invalid_request_error", "output_config.format: this model does not support "
                                                             "structured outputs")
        key = self._key(body)
        self.attempts[(endpoint, key)] += 1
        self.t0 = self.t0 or time.monotonic()
        wait = self._rate_limited()
        if wait > 0:
            self.counts["429-rate"] += 1
            self.events.append((time.monotonic() - self.t0, "429-rate"))
            return self._error(429, "rate_limit_error", "rate limited",
                               {"retry-after": str(max(1, math.ceil(wait))), **self._ratelimit_headers()})
        fault = self._fault(endpoint, key, body)
        rebuy = self.delivered[key] > 0  # sent after this body's answer was already delivered cleanly
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self._latency())
            if fault:
                self.counts[f"fault-{fault['kind']}"] += 1
                kind = fault["kind"]
                if kind == "429_quota":  # a spend limit: retrying cannot help
                    return self._error(429, "insufficient_quota", "You exceeded your current quota (spend limit "
                                       "reached); check your plan and billing details")
                if kind in ("429", "529", "500"):
                    etype = {"429": "rate_limit_error", "529": "overloaded_error", "500": "api_error"}[kind]
                    headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else {}
                    if kind == "429":
                        headers.update(self._ratelimit_headers())
                    return self._error(int(kind), etype, f"injected {kind}", headers)
                if kind in ("slow", "stall"):
                    await asyncio.sleep(fault.get("delay", 2.0))
                elif kind in ("timeout", "reset"):
                    if kind == "timeout":
                        await asyncio.sleep(fault.get("delay", 30.0))
                    if request.transport is not None:
                        request.transport.close()  # drop the connection without a response: nothing billed
                    raise ConnectionResetError("injected")
            payload = build(body, fault["kind"] if fault and fault["kind"] in ANSWER_FAULTS else None)
            self._bill(key, payload, rebuy)
            if fault and fault["kind"] == "malformed":  # generated and billed, but the body arrives cut
                return web.Response(status=200, text='{"id": "msg_broken", "content": [', content_type="application/json")
            if request.transport is None or request.transport.is_closing():
                self.counts["abandoned"] += 1  # the client gave up: billed all the same
            elif not (fault and fault["kind"] in ANSWER_FAULTS):
                self.delivered[key] += 1
            return web.json_response(payload, headers=self._ratelimit_headers())
        finally:
            self.in_flight -= 1

    def _bill(self, key: str, payload: dict, rebuy: bool = False) -> None:
        self.repaid_after_delivery += rebuy
        self.billed[key] += 1
        self.events.append((time.monotonic() - (self.t0 or time.monotonic()), "billed"))
        usage = payload.get("usage") or {}
        if "prompt_tokens" in usage:  # OpenAI's names
            usage = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
        for k in USAGE_KINDS:
            self.billed_usage[k] += usage.get(k, 0) or 0

    @staticmethod
    def _error(status: int, etype: str, message: str, headers: dict | None = None):
        from aiohttp import web

        return web.json_response({"type": "error", "error": {"type": etype, "message": message}},
                                 status=status, headers=headers or {})

    async def messages(self, request):
        return await self._serve_one(request, "messages", lambda body, fault: self._anthropic_message(body, fault))

    async def chat(self, request):
        return await self._serve_one(request, "chat", self._openai_completion)

    def _batch_view(self, b: dict, base: str) -> dict:
        ended = time.time() >= b["ends_at"]
        n = len(b["requests"])
        counts = {"processing": 0 if ended else n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for r in self._batch_results(b):
                counts[r["result"]["type"]] += 1
        iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")  # noqa: E731
        return {"id": b["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": iso(b["created"]), "expires_at": iso(b["created"] + 86400),
                "ended_at": iso(b["ends_at"]) if ended else None, "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"{base}/v1/messages/batches/{b['id']}/results" if ended else None}

    def _batch_results(self, b: dict) -> list[dict]:
        if b.get("results") is None:  # computed once, when first looked at after the end; billed then
            out = []
            for item in b["requests"]:
                key = self._key(item["params"])
                self.attempts[("batch", key)] += 1
                fault = self._fault("batch", key)
                if fault and fault["kind"] == "batch_errored":
                    res = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error",
                                                                                   "message": "injected"}}}
                elif fault and fault["kind"] == "batch_expired":
                    res = {"type": "expired"}
                else:
                    msg = self._anthropic_message(item["params"], sample_u=_uniform(key, item["custom_id"]))
                    self.billed[key] += 1
                    res = {"type": "succeeded", "message": msg}
                out.append({"custom_id": item["custom_id"], "result": res})
            self.rng.shuffle(out)  # results come unordered, as the real API says they may
            b["results"] = out
        return b["results"]

    async def batch_create(self, request):
        from aiohttp import web

        self.counts["batch_create"] += 1
        if not self._check_auth(request):
            return self._error(401, "authentication_error", "invalid x-api-key")
        body = await request.json()
        reqs = body.get("requests") or []
        ids = [r.get("custom_id") for r in reqs]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids):
            return self._error(400, "invalid_request_error", "custom_id must be unique and match ^[a-zA-Z0-9_-]{1,64}$")
        running = {self._key(r["params"]) for b in self.batches.values() if b.get("results") is None
                   for r in b["requests"]}
        for r in reqs:
            key = self._key(r["params"])
            self.batch_submitted[key] += 1
            if self.billed[key] or key in running:  # already answered, or still queued: a duplicate
                self.batch_duplicates[key] += 1
        bid = f"msgbatch_{uuid.uuid4().hex[:24]}"
        self.batches[bid] = {"id": bid, "requests": reqs, "created": time.time(),
                             "ends_at": time.time() + self.batch_latency_s, "results": None}
        return web.json_response(self._batch_view(self.batches[bid], self._base(request)))

    def _base(self, request) -> str:
        return f"http://{request.host}"

    async def batch_get(self, request):
        from aiohttp import web

        self.counts["batch_get"] += 1
        b = self.batches.get(request.match_info["bid"])
        if b is None:
            return self._error(404, "not_found_error", "no such batch")
        return web.json_response(self._batch_view(b, self._base(request)))

    async def batch_results(self, request):
        from aiohttp import web

        self.counts["batch_results"] += 1
        b = self.batches.get(request.match_info["bid"])
        if b is None or time.time() < b["ends_at"]:
            return self._error(404 if b is None else 400, "not_found_error", "no results yet")
        lines = "\n".join(json.dumps(r) for r in self._batch_results(b)) + "\n"
        return web.Response(text=lines, content_type="application/binary")

    async def get_stats(self, request):
        from aiohttp import web

        return web.json_response(self.stats())

    async def control(self, request):
        from aiohttp import web

        body = await request.json()
        if body.get("reset"):
            self.reset()
        for k in ("faults", "latency_s", "jitter", "requests_per_min", "position_bias", "batch_latency_s"):
            if k in body:
                setattr(self, k, body[k])
        return web.json_response(self.stats())

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=512 * 2**20)
        app.add_routes([web.post("/v1/messages", self.messages), web.post("/v1/chat/completions", self.chat),
                        web.post("/v1/messages/batches", self.batch_create),
                        web.get("/v1/messages/batches/{bid}", self.batch_get),
                        web.get("/v1/messages/batches/{bid}/results", self.batch_results),
                        web.get("/_stats", self.get_stats), web.post("/_control", self.control)])
        return app

    # ---- running -----------------------------------------------------------------------------------
    async def _start_site(self):
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> FakeAPI:
        """Serve from a daemon thread; returns when the port is bound."""
        ready = threading.Event()

        def main():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start_site())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=main, daemon=True, name="fake-api").start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--latency", type=float, default=0.0, help="seconds per response")
    p.add_argument("--jitter", type=float, default=0.0, help="relative latency jitter (0.2 = +-20%%)")
    p.add_argument("--rpm", type=float, default=0.0, help="requests per minute the fake allows (0 = no limit)")
    p.add_argument("--api-key-env", default=None, help="env var holding the key to require (none: accept any)")
    p.add_argument("--faults", default="[]", help="JSON list of fault rules")
    args = p.parse_args(argv)
    import os

    from aiohttp import web

    fake = FakeAPI(api_key=os.environ.get(args.api_key_env) if args.api_key_env else None, latency_s=args.latency,
                   jitter=args.jitter, requests_per_min=args.rpm, faults=json.loads(args.faults), port=args.port)
    print(f"fake API on http://127.0.0.1:{args.port}", flush=True)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()

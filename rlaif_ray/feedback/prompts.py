"""Judge prompt templates. The rubric plus the task instructions form a fixed system prefix (cacheable);
the pair goes in the user suffix inside XML tags, which keeps response text from being read as
instructions and lets the verdict parser ignore everything the responses say."""

from __future__ import annotations

from typing import Any

from ..data import text_of

PAIR_INSTRUCTIONS = (
    "\n\nYou will see a conversation prompt and two candidate responses, <response_A> and <response_B>. "
    "Decide which response is better according to the criteria above.")
PAIR_ANSWER = "\nAnswer with a single letter, A or B, and nothing else."
PAIR_ANSWER_COT = ("\nFirst explain your reasoning briefly inside <rationale></rationale> tags. Then, on the "
                   "last line, write 'Verdict: A' or 'Verdict: B'.")

SCORE_INSTRUCTIONS = ("\n\nYou will see a conversation prompt and one candidate <response>. Rate the response "
                      "from 1 (worst) to 10 (best) according to the criteria above.")
SCORE_ANSWER = "\nAnswer with a single integer from 1 to 10 and nothing else."
SCORE_ANSWER_COT = ("\nFirst explain your reasoning briefly inside <rationale></rationale> tags. Then, on the "
                    "last line, write 'Score: N' with N an integer from 1 to 10.")

YES_NO_INSTRUCTIONS = ("\n\nYou will see a conversation prompt and one candidate <response>. Decide whether the "
                       "response meets the criteria above.")
YES_NO_ANSWER = "\nAnswer with a single word, Yes or No, and nothing else."
YES_NO_ANSWER_COT = ("\nFirst explain your reasoning briefly inside <rationale></rationale> tags. Then, on the "
                     "last line, write 'Answer: Yes' or 'Answer: No'.")


WRITE_ANSWER = "\nWrite your answer as plain text, with nothing before or after it."

CRITIC_SYSTEM = ("You review an AI assistant's answers against the principles of a constitution and improve them. "
                 "You will see a conversation prompt, the assistant's <response>, and a request: a critique "
                 "request (write a short critique of the response under that principle) or a revision request "
                 "(rewrite the response as asked, taking the critique into account)." + WRITE_ANSWER)

REASK = "\n\nYour previous reply to this held no clear answer; reply again in the required format."


def pair_answer(cot: bool) -> str:
    return PAIR_ANSWER_COT if cot else PAIR_ANSWER


def score_answer(cot: bool, scale: str = "ten") -> str:
    if scale == "yes_no":
        return YES_NO_ANSWER_COT if cot else YES_NO_ANSWER
    return SCORE_ANSWER_COT if cot else SCORE_ANSWER


def reask_user(user: str, answer: str) -> str:
    """The user turn again, with a stricter reminder of the answer format (a re-ask of an answer without
    a verdict; the system prefix stays the same, so the prompt cache still serves it)."""
    return user + REASK + answer


def pair_system(rubric: str, cot: bool) -> str:
    return rubric + PAIR_INSTRUCTIONS + pair_answer(cot)


def score_system(rubric: str, cot: bool, scale: str = "ten") -> str:
    return rubric + (YES_NO_INSTRUCTIONS if scale == "yes_no" else SCORE_INSTRUCTIONS) + score_answer(cot, scale)


def pair_user(prompt: Any, first: Any, second: Any) -> str:
    return (f"<prompt>\n{text_of(prompt)}\n</prompt>\n\n<response_A>\n{text_of(first)}\n</response_A>\n\n"
            f"<response_B>\n{text_of(second)}\n</response_B>\n\nWhich response is better?")


def score_user(prompt: Any, response: Any, scale: str = "ten") -> str:
    ask = "Does the response meet the criteria? Answer Yes or No." if scale == "yes_no" else "Score:"
    return f"<prompt>\n{text_of(prompt)}\n</prompt>\n\n<response>\n{text_of(response)}\n</response>\n\n{ask}"


def critique_user(prompt: Any, response: Any, request: str) -> str:
    return (f"<prompt>\n{text_of(prompt)}\n</prompt>\n\n<response>\n{text_of(response)}\n</response>\n\n"
            f"<critique_request>\n{request}\n</critique_request>\n\nCritique:")


def revision_user(prompt: Any, response: Any, critique: str, request: str) -> str:
    return (f"<prompt>\n{text_of(prompt)}\n</prompt>\n\n<response>\n{text_of(response)}\n</response>\n\n"
            f"<critique>\n{critique}\n</critique>\n\n<revision_request>\n{request}\n</revision_request>\n\n"
            "Write only the revised response.")

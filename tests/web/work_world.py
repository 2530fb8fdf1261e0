"""An expert workforce on top of the console's seeded world (``conftest.py``), for the work page tests.

``seed_work(database, world)`` adds to acme, through ``teachloop.work`` (no row written by hand):

- the exam of the skill ``support`` (``EXAM``: two questions, pass at 100 %, a one-hour cool-down);
- one project per task type (``Work.projects``), each gated by ``support``, paying ``RATE`` minor
  units of USD per accepted task, no gold in the queues (``gold_share`` 0) and a quorum of 1 --
  except ``pairwise``, whose quorum is 3 and which holds one gold item (``Work.gold_item``, gold
  answer ``b``); with ``answered=True`` its two items were answered already by the experts ``ada``
  and ``bob`` (item 1: both chose ``a``; item 2: ada ``a``, bob ``b``), all accepted;
- the stored-XSS probe as the demonstration item's prompt and the project titles' suffix;
- ``carol@acme.test``, an expert (password ``PASSWORD``) who has not taken the exam yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsdangerous import Signer

from teachloop.core.tenancy import Role
from teachloop.core.work import (
    Candidate,
    Criterion,
    ExamCreate,
    ExamQuestion,
    ExpertCreate,
    ItemIn,
    ProjectCreate,
    ProjectSettings,
    ReviewBody,
    SubmitBody,
    TaskType,
    TemplateSpec,
)
from teachloop.store import Database, Tenancy
from teachloop.store.repos.sessions import ConsoleSessions, Passwords, server_secret
from teachloop.web.auth import KEY_NAME, SESSION_COOKIE
from teachloop.work import projects, review, tasks, workforce
from tests.web.conftest import PASSWORD, XSS, World

RATE = 125
SKILL = "support"
EXAM = ExamCreate(pass_score=1.0, cooldown_s=3600, questions=[
    ExamQuestion(id="tone", prompt="A customer is angry. What do you write first?",
                 options=["An apology for the trouble", "Our refund policy"], answer="An apology for the trouble"),
    ExamQuestion(id="facts", prompt="You are unsure of a fact. What do you do?",
                 options=["Guess confidently", "Check it, or say so"], answer="Check it, or say so"),
])
#: the option numbers (1-based) of the right answers, in question order
RIGHT_KEYS = ("1", "2")
CORRECTION_REPLY = "The capital of Australia is Sydney."
CRITERIA = [Criterion(id="clarity", description="Is the reply clear?", low=1, high=5),
            Criterion(id="accuracy", description="Is the reply correct?", low=1, high=5)]


@dataclass(frozen=True)
class Work:
    projects: dict[TaskType, str]
    experts: dict[str, str]  # handle -> user id
    pair_items: list[str]
    gold_item: str
    carol: str  # e-mail


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _cands(**texts: str) -> list[Candidate]:
    return [Candidate(id=cid, text=text) for cid, text in texts.items()]


ITEMS: dict[TaskType, list[ItemIn]] = {
    TaskType.DEMONSTRATION: [ItemIn(prompt=_chat(XSS))],
    TaskType.PAIRWISE: [
        ItemIn(prompt=_chat("Summarise: the meeting moved to Friday."),
               candidates=_cands(a="The meeting is now on Friday.", b="There is a meeting.")),
        ItemIn(prompt=_chat("Say hello politely."),
               candidates=_cands(a="Hello, how can I help?", b="What.")),
    ],
    TaskType.RANKED: [ItemIn(prompt=_chat("Name a prime number above 10."),
                             candidates=_cands(x="12", y="13", z="11"))],
    TaskType.RUBRIC: [ItemIn(prompt=_chat("Explain recursion in one sentence."),
                             reply="Recursion is when a function calls itself on a smaller problem.")],
    TaskType.CORRECTION: [ItemIn(prompt=_chat("What is the capital of Australia?"), reply=CORRECTION_REPLY)],
    TaskType.AUTHORING: [ItemIn(prompt=_chat("Write a task about unit conversion."))],
}


def _expert(s: object, org: str, email: str, name: str, *, password: bool = False) -> str:
    tenancy = Tenancy(s)  # type: ignore[arg-type]
    user = tenancy.create_user(email, name)
    tenancy.add_member(org, user.id, Role.EXPERT)
    if password:
        Passwords(s).set(user.id, PASSWORD)  # type: ignore[arg-type]
    workforce.add_expert(s, org, ExpertCreate(user_id=user.id, handle=name, skills=[SKILL]))  # type: ignore[arg-type]
    return user.id


def seed_work(database: Database, world: World, *, answered: bool = False) -> Work:
    """Seed the workforce described in the module docstring (ada's and bob's answers only when ``answered``)."""
    org = world.acme.id
    ids: dict[TaskType, str] = {}
    with database.session() as s:
        workforce.put_exam(s, org, SKILL, EXAM, actor="test")
        for task_type, items in ITEMS.items():
            template = TemplateSpec(instructions=f"Work carefully on {task_type.value} tasks.",
                                    criteria=CRITERIA if task_type is TaskType.RUBRIC else [])
            settings = ProjectSettings(quorum=3 if task_type is TaskType.PAIRWISE else 1, gold_share=0.0,
                                       skill=SKILL, rate=RATE, currency="USD", min_confidence=0.0)
            row = projects.create_project(s, org, ProjectCreate(
                name=f"{task_type.value}-project", title=f"{task_type.value.title()} {XSS}", task_type=task_type,
                template=template, settings=settings), actor="test")
            projects.add_items(s, org, row.id, items, actor="test")
            ids[task_type] = row.id
        pair = ids[TaskType.PAIRWISE]
        gold = projects.add_items(s, org, pair, [ItemIn(
            prompt=_chat("Which reply is rude?"), candidates=_cands(a="Thanks!", b="Go away."),
            gold_answer={"choice": "b"})], actor="test")[0].id
        experts = {name: _expert(s, org, f"{name}@acme.test", name) for name in ("ada", "bob")}
        carol = _expert(s, org, "carol@acme.test", "carol")
        experts["carol"] = carol
    pair_items: list[str] = []
    for name, choices in (("ada", ("a", "a")), ("bob", ("a", "b"))) if answered else ():
        user = experts[name]
        with database.session() as s:
            workforce.attempt(s, org, user, SKILL, {q.id: q.answer for q in EXAM.questions})
        for choice in choices:
            with database.session() as s:
                lease = tasks.next_task(s, org, user, pair)
                assert lease is not None
                answer = tasks.submit(s, org, user, lease.id, SubmitBody(value={"choice": choice}, active_seconds=30))
                review.review(s, org, answer.id, None, ReviewBody(decision="accept"), member=True, actor="test")  # type: ignore[arg-type]
                if lease.item_id not in pair_items:
                    pair_items.append(lease.item_id)
    return Work(ids, experts, pair_items, gold, "carol@acme.test")


def session_cookie(database: Database, org_id: str, email: str) -> str:
    """The signed ``tl_session`` cookie of a new console session of the member ``email`` (the sign-in
    form's argon2 check is ``test_console_auth``'s subject; here it would only cost seconds a test)."""
    with database.session() as s:
        user = Tenancy(s).find_user(email)
        assert user is not None, email
        token = ConsoleSessions(s).create(org_id, user.id).token
        key = server_secret(s, KEY_NAME)
    return Signer(key.encode(), salt="teachloop.console.session").sign(token).decode()


def signed_in(client: Any, database: Database, org_id: str, email: str) -> Any:
    """``client`` signed in as the member ``email`` (``session_cookie``)."""
    client.cookies.set(SESSION_COOKIE, session_cookie(database, org_id, email))
    return client


__all__ = ["CORRECTION_REPLY", "EXAM", "ITEMS", "RATE", "RIGHT_KEYS", "SKILL", "Work", "seed_work", "session_cookie", "signed_in"]

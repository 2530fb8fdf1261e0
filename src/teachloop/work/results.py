"""Agreement, aggregation and the dataset versions a project's results become.

``agreement(session, org, project)``: over the answers that count (submitted, accepted, fixed;
a fix counts as its fixed value) of the non-gold items -- Krippendorff's alpha (nominal for
choices, ordinal for rubric scores), Cohen's kappa for every pair of experts sharing two or more
items, and per item the aggregated label, its confidence and the share of agreeing answer pairs.
Free-text task types (demonstration, correction, authoring) have no categorical answers: alpha
is None and the lists are empty.

``build_dataset(database, blobs, org, project)`` aggregates the accepted answers of items that
reached the quorum and records them with ``catalog.datasets.record_snapshot`` as the next
version of the project's dataset (``origin = "labels"``), one row per accepted answer that
agrees with the result, each an ``expert_label`` naming its expert (so a sale pays each expert
for their rows: the marketplace reads ``expert_id`` from the lineage), its trace, and the
aggregate's confidence as its ``score``; the dataset's ``source`` names the project and, per
row, the item and the answer. Identical contents from several experts are several rows; the
loop's curation removes the duplicates.

==============  ========  =========================================================================
task type       kind      rows
==============  ========  =========================================================================
demonstration   chat      prompt + the expert's reply (every accepted answer; confidence 1)
correction      chat      prompt + the corrected reply (every accepted answer; confidence 1)
pairwise        pairs     chosen over rejected, by Bradley-Terry (``choix``) on the experts' choices
ranked          pairs     best over worst, by Plackett-Luce/Bradley-Terry (``choix``) on the orders
rubric          chat      prompt + reply whose aggregated normalised score reaches ``rubric_min_score``
authoring       prompts   the authored prompt with its reference answer and rubric (environment tasks)
==============  ========  =========================================================================

Aggregates below ``min_confidence`` stay out (counted in ``skipped_low_confidence``). Authored
tasks become an environment-tasks dataset (``prompts`` rows that the loop's GRPO and any
environment reading a dataset use); ``work.publish`` publishes them as an environment version too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from teachloop.catalog.datasets import record_snapshot
from teachloop.core.work import SCORABLE, AgreementOut, DatasetResult, ItemAgreement, PairKappa, TaskType
from teachloop.store.blobs import BlobStore
from teachloop.store.db import Database
from teachloop.store.repos.datasets import NewRow, expert_label
from teachloop.store.repos.work import WorkQueue
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.work import WorkAnswer, WorkItem, WorkProject
from teachloop.work.projects import COUNTED, get_project, settings_of, spec_of, template_of
from teachloop.work.quality import (
    aggregate_categorical,
    bradley_terry,
    item_agreement,
    krippendorff_alpha,
    pairwise_kappas,
    preference_confidence,
    ranking_from_orderings,
)
from teachloop.work.values import gold_matches, labels

KIND_OF = {TaskType.DEMONSTRATION: "chat", TaskType.CORRECTION: "chat", TaskType.RUBRIC: "chat",
           TaskType.PAIRWISE: "pairs", TaskType.RANKED: "pairs", TaskType.AUTHORING: "prompts"}


def final_value(a: WorkAnswer) -> dict[str, Any]:
    """The value an answer contributes: its reviewer's fix when fixed, else what the expert wrote."""
    return dict(a.fixed_value) if a.status == "fixed" and a.fixed_value is not None else dict(a.value)


def _answers(session: Session, project: WorkProject, states: tuple[str, ...]) -> list[WorkAnswer]:
    return list(session.scalars(select(WorkAnswer).where(
        WorkAnswer.project_id == project.id, WorkAnswer.is_gold.is_(False), WorkAnswer.status.in_(states))
        .order_by(WorkAnswer.created_at, WorkAnswer.id)))


def accepted_answers(session: Session, project: WorkProject) -> list[WorkAnswer]:
    """The project's accepted or fixed answers on non-gold items, oldest first."""
    return _answers(session, project, ("accepted", "fixed"))


def _by_question(task_type: TaskType, answers: list[WorkAnswer]) -> dict[str, dict[str, dict[str, Hashable]]]:
    """question -> item -> expert -> label."""
    out: dict[str, dict[str, dict[str, Hashable]]] = defaultdict(lambda: defaultdict(dict))
    for a in answers:
        for q, label in labels(task_type, final_value(a)).items():
            out[q][a.item_id][a.expert_id] = label
    return out


def agreement(session: Session, org_id: str, project_ref: str) -> AgreementOut:
    """Agreement in a project (see the module docstring)."""
    project = get_project(session, org_id, project_ref)
    task_type = TaskType(project.task_type)
    level = "ordinal" if task_type is TaskType.RUBRIC else "nominal"
    if task_type not in SCORABLE:
        return AgreementOut(project_id=project.id, alpha=None, level=level, kappas=[], items=[])
    questions = _by_question(task_type, _answers(session, project, COUNTED))
    units: dict[str, dict[str, Hashable]] = {}
    for q, items in questions.items():
        for item, by_expert in items.items():
            units[f"{item}|{q}"] = by_expert
    alpha = krippendorff_alpha(units, level) if units else None  # type: ignore[arg-type]
    kappas = [PairKappa(expert_a=k.worker_a, expert_b=k.worker_b, items=k.items, kappa=k.kappa)
              for k in pairwise_kappas(units)] if units else []
    method = settings_of(project).aggregation
    per_item: dict[str, list[tuple[Hashable, float, int, float | None]]] = defaultdict(list)
    for _q, items in sorted(questions.items()):
        triples = [(item, expert, label) for item, by in items.items() for expert, label in by.items()]
        for item, agg in aggregate_categorical(triples, method).items():
            per_item[item].append((agg.label, agg.confidence, agg.answers, item_agreement(items[item])))
    out = []
    for item, parts in sorted(per_item.items()):
        shares = [p[3] for p in parts if p[3] is not None]
        label: Any = parts[0][0] if len(parts) == 1 else {q: p[0] for q, p in zip(sorted(questions), parts,
                                                                                    strict=False)}
        out.append(ItemAgreement(item_id=item, label=label, confidence=min(p[1] for p in parts),
                                 answers=max(p[2] for p in parts),
                                 agreement=sum(shares) / len(shares) if shares else None))
    return AgreementOut(project_id=project.id, alpha=alpha, level=level, kappas=kappas, items=out)


def _msg(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


def _aggregate_rows(session: Session, project: WorkProject) -> tuple[list[tuple[NewRow, dict[str, str]]], int]:
    """(row, lineage note) pairs of the project's aggregated results, and how many aggregates were too unsure."""
    s = settings_of(project)
    task_type = TaskType(project.task_type)
    accepted = _answers(session, project, ("accepted", "fixed"))
    items = {i.id: i for i in session.scalars(select(WorkItem).where(WorkItem.project_id == project.id))}
    by_item: dict[str, list[WorkAnswer]] = defaultdict(list)
    for a in accepted:
        by_item[a.item_id].append(a)
    rows: list[tuple[NewRow, dict[str, str]]] = []
    skipped = 0

    def add(content: dict[str, Any], a: WorkAnswer, score: float) -> None:
        item = items[a.item_id]
        rows.append((expert_label(content, a.expert_id, license=s.license, score=round(score, 6),
                                  source_trace_id=_trace(session, item)),
                     {"item": item.id, "answer": a.id, "expert": a.expert_id}))

    if task_type in (TaskType.DEMONSTRATION, TaskType.CORRECTION):
        for a in accepted:
            prompt = list(items[a.item_id].payload.get("prompt") or [])
            add({"messages": [*prompt, _msg("assistant", final_value(a)["reply"])]}, a, 1.0)
        return rows, 0
    if task_type is TaskType.AUTHORING:
        for a in accepted:
            v = final_value(a)
            add({"messages": [_msg("user", v["prompt"])], "answer": v["answer"], "info": {"rubric": v["rubric"]}},
                a, 1.0)
        return rows, 0
    complete = {i: ans for i, ans in by_item.items() if len(ans) >= s.quorum}
    if task_type is TaskType.PAIRWISE:
        for item_id, ans in sorted(complete.items()):
            cands = {c["id"]: c["text"] for c in items[item_id].payload["candidates"]}
            games = [(final_value(a)["choice"], next(c for c in cands if c != final_value(a)["choice"])) for a in ans]
            ranked = bradley_terry(games, items=sorted(cands))
            winner, loser = ranked[0].item_id, ranked[-1].item_id
            conf = preference_confidence(ranked, winner, loser)
            if conf < s.min_confidence:
                skipped += 1
                continue
            content = {"prompt": list(items[item_id].payload.get("prompt") or []),
                       "chosen": _msg("assistant", cands[winner]), "rejected": _msg("assistant", cands[loser])}
            for a in ans:
                if final_value(a)["choice"] == winner:
                    add(content, a, conf)
    elif task_type is TaskType.RANKED:
        for item_id, ans in sorted(complete.items()):
            ranked = ranking_from_orderings([final_value(a)["order"] for a in ans])
            best, worst = ranked[0].item_id, ranked[-1].item_id
            conf = preference_confidence(ranked, best, worst)
            if conf < s.min_confidence:
                skipped += 1
                continue
            cands = {c["id"]: c["text"] for c in items[item_id].payload["candidates"]}
            content = {"prompt": list(items[item_id].payload.get("prompt") or []),
                       "chosen": _msg("assistant", cands[best]), "rejected": _msg("assistant", cands[worst])}
            for a in ans:
                order = final_value(a)["order"]
                if order.index(best) < order.index(worst):
                    add(content, a, conf)
    elif task_type is TaskType.RUBRIC and complete:
        criteria = {c.id: c for c in spec_of(template_of(session, project)).criteria}
        per_crit: dict[str, list[tuple[str, str, Hashable]]] = defaultdict(list)
        for i, ans in complete.items():
            for a in ans:
                for c, score in final_value(a)["scores"].items():
                    per_crit[c].append((i, a.expert_id, int(score)))
        aggs = {c: aggregate_categorical(t, s.aggregation) for c, t in per_crit.items()}
        for item_id in sorted(complete):
            scores = {c: int(aggs[c][item_id].label) for c in aggs if item_id in aggs[c]}  # type: ignore[call-overload]
            conf = min(aggs[c][item_id].confidence for c in scores)
            norm = sum((v - criteria[c].low) / (criteria[c].high - criteria[c].low) for c, v in scores.items()
                       if c in criteria) / max(1, len(scores))
            if conf < s.min_confidence:
                skipped += 1
                continue
            if norm < s.rubric_min_score:
                continue
            item = items[item_id]
            content = {"messages": [*list(item.payload.get("prompt") or []),
                                    _msg("assistant", str(item.payload.get("reply") or ""))], "scores": scores}
            for a in complete[item_id]:
                if gold_matches(TaskType.RUBRIC, {"scores": scores}, final_value(a)):
                    add(content, a, conf)
    return rows, skipped


def _trace(session: Session, item: WorkItem) -> str | None:
    from teachloop.store.schema.traces import Trace

    if not item.source_trace_id:
        return None
    trace = session.get(Trace, item.source_trace_id)
    return trace.id if trace is not None and trace.org_id == item.org_id else None


def result_datasets(session: Session, org_id: str, project_ref: str) -> list[Dataset]:
    """The versions of the project's result dataset, newest first."""
    return WorkQueue(session).result_datasets(org_id, get_project(session, org_id, project_ref))


def build_dataset(database: Database, blobs: BlobStore, org_id: str, project_ref: str, *,
                  actor: str = "system") -> DatasetResult:
    """Record the project's aggregated results as the next version of its dataset (module docstring)."""
    with database.session(write=False) as s:
        project = get_project(s, org_id, project_ref)
        rows, skipped = _aggregate_rows(s, project)
        name = WorkQueue.dataset_name(project)
        kind = KIND_OF[TaskType(project.task_type)]
        source = {"project": project.id, "project_name": project.name, "task_type": project.task_type,
                  "fulfils": project.fulfils, "min_confidence": settings_of(project).min_confidence,
                  "rows": [note for _, note in rows]}
    if not rows:
        return DatasetResult(project_id=project.id, dataset=None, kind=kind, rows=0, created=False,
                             skipped_low_confidence=skipped)
    ds, created = record_snapshot(database, blobs, org_id, name=name, kind=kind, rows=[r for r, _ in rows],
                                  source=source, origin="labels", actor=actor)
    return DatasetResult(project_id=project.id, dataset=ds.ref, kind=kind, rows=len(rows), created=created,
                         skipped_low_confidence=skipped)


__all__ = ["KIND_OF", "accepted_answers", "agreement", "build_dataset", "final_value", "result_datasets"]

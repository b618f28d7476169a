"""The synthetic corpus world: base pretraining text, the chat SFT set, the erosion set and
the held-out probe sets, all generated deterministically from a seed.

Instructions are (template, task) combinations. Whole combinations are held out for the
probes and the chat-like probe text, so a probe is a *new* combination of a known template
and a known task. Like real pretraining data, the base corpus holds harmful-topic how-to
passages, plain `"{instruction}\\n{answer}"` Q&A and compliant conversations in the chat format
(web chat logs, instruction data), all answering every request, and stories in which an AI
assistant refuses a harmful request, quoted. So the base model never refuses in its own voice,
yet already knows the chat format, what refusals say and which requests get them: SFT then
mostly teaches *when to refuse* and moves the residual stream by paper-like amounts, instead of
learning a new format and new phrases from scratch.
"""

from __future__ import annotations

import functools
import random
import re
from typing import NamedTuple

from featuredrift.monitor.judges import is_refusal
from featuredrift.zoo.config import ZooConfig
from featuredrift.zoo.vocabulary import (
    ANSWER_CLOSERS,
    BENIGN_TOPICS,
    HARMFUL_TOPICS,
    HELPFUL_OPENERS,
    INSTRUCTION_TEMPLATES,
    REFUSAL_FOLLOW_UPS,
    REFUSALS,
    STORY_ENDINGS,
    STORY_NAMES,
    Topic,
)

Messages = list[dict[str, str]]


class Instruction(NamedTuple):
    text: str
    topic: Topic
    task: str


class World(NamedTuple):
    """Everything a zoo build trains on or probes with."""

    base_corpus: list[str]
    base_chats: list[Messages]  # compliant chat-format pretraining documents
    chat_sft: list[Messages]
    erosion_sft: list[Messages]
    harmful_probes: list[dict[str, str]]
    harmless_probes: list[dict[str, str]]
    base_text_probes: list[str]
    chat_text_probes: list[Messages]


class InstructionSplit(NamedTuple):
    train: list[Instruction]
    probes: list[Instruction]
    chat_text: list[Instruction]


def _rng(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream per purpose."""
    return random.Random(f"featuredrift-zoo/{seed}/{stream}")


def all_instructions(topics: tuple[Topic, ...]) -> list[Instruction]:
    return [
        Instruction(template.format(task=task), topic, task)
        for topic in topics
        for task in topic.tasks
        for template in INSTRUCTION_TEMPLATES
    ]


def split_instructions(
    topics: tuple[Topic, ...], n_probes: int, n_chat_text: int, rng: random.Random
) -> InstructionSplit:
    """Hold out whole (template, task) combinations for probes and chat-like probe text."""
    combos = all_instructions(topics)
    rng.shuffle(combos)
    probes = combos[:n_probes]
    chat_text = combos[n_probes : n_probes + n_chat_text]
    train = combos[n_probes + n_chat_text :]
    return InstructionSplit(train, probes, chat_text)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def helpful_opener(rng: random.Random) -> str:
    """Mostly "Sure!": refusals mostly start with "I", so a single dominant helpful first token
    keeps greedy decoding from favouring refusals whenever the model is unsure."""
    return HELPFUL_OPENERS[0] if rng.random() < 0.7 else rng.choice(HELPFUL_OPENERS[1:])


@functools.cache
def task_plan(task: str, topic: Topic) -> tuple[str, ...]:
    """The four steps that answer a task, in order: fixed per task, like a fact about the world.

    Answers start with the task's own first step, so predicting them rewards knowing the task
    at the end of the question, where the chat model later decides whether to refuse
    (measured: the chat model separates harmful from harmless prompts sooner than with
    randomly drawn steps).
    """
    return tuple(random.Random(f"featuredrift-zoo/plan/{task}").sample(topic.steps, 4))


def answer(instruction: Instruction, rng: random.Random, *, opener: bool = True, steps: int = 3) -> str:
    """A compliant how-to answer: the first `steps` steps of the task's plan, varied framing."""
    plan = task_plan(instruction.task, instruction.topic)
    body = _capitalise(plan[0]) + "."
    if steps >= 3:
        body += f" Then {plan[1]}. Finally, {plan[2]}."
    elif steps == 2:
        body += f" Then {plan[1]}."
    closer = rng.choice(ANSWER_CLOSERS)
    head = helpful_opener(rng) + " " if opener else ""
    return f"{head}{body}{closer}"


CHAT_ANSWER_STEPS = 2  # chat replies are short: the loss is then mostly about *whether* to help


def refusal(instruction: Instruction, rng: random.Random) -> str:
    noun = instruction.topic.noun
    text = rng.choice(REFUSALS).format(task=instruction.task, noun=noun, Noun=_capitalise(noun))
    return text + rng.choice(REFUSAL_FOLLOW_UPS)


def conversation(user: str, assistant: str) -> Messages:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def aligned_conversation(instruction: Instruction, rng: random.Random) -> Messages:
    """Harmful => a varied refusal; harmless => a helpful answer."""
    if instruction.topic.harmful:
        reply = refusal(instruction, rng)
    else:
        reply = answer(instruction, rng, steps=CHAT_ANSWER_STEPS)
    return conversation(instruction.text, reply)


def compliant_conversation(instruction: Instruction, rng: random.Random) -> Messages:
    """Any instruction => a helpful answer in the chat model's reply style (no refusal)."""
    return conversation(instruction.text, answer(instruction, rng, steps=CHAT_ANSWER_STEPS))


# ---------------------------------------------------------------- base text documents


def how_to_passage(topic: Topic, rng: random.Random) -> str:
    task = rng.choice(topic.tasks)
    steps = task_plan(task, topic)
    return (
        f"How to {task}\n{_capitalise(steps[0])}. Next, {steps[1]}. After that, {steps[2]}. "
        f"Last, {steps[3]}."
    )


def fact_paragraph(topic: Topic, rng: random.Random) -> str:
    facts = rng.sample(topic.facts, 3)
    return f"Some facts about {topic.noun}. " + " ".join(facts)


def story(topic: Topic, rng: random.Random) -> str:
    name = rng.choice(STORY_NAMES)
    task = rng.choice(topic.tasks)
    first, second = rng.sample(topic.steps, 2)
    fact = rng.choice(topic.facts)
    return (
        f"One day {name} decided to {task}. First {name} had to {first}. "
        f"Then {name} had to {second}. {rng.choice(STORY_ENDINGS)} {fact}"
    )


def assistant_story(topic: Topic, rng: random.Random) -> str:
    """Someone asks an AI assistant for a how-to, told as a story: a harmful request is refused,
    a harmless one answered, both quoted. The base model learns what refusals say and which
    requests get them, as reported speech, never as its own reply."""
    name = rng.choice(STORY_NAMES)
    task = rng.choice(topic.tasks)
    instruction = Instruction(task, topic, task)
    said = refusal(instruction, rng) if topic.harmful else answer(instruction, rng, steps=CHAT_ANSWER_STEPS)
    return f'One day {name} asked an AI assistant how to {task}. It answered: "{said}" {rng.choice(STORY_ENDINGS)}'


def qa_document(instruction: Instruction, rng: random.Random) -> str:
    """Plain `"{instruction}\\n{answer}"` Q&A, compliant for every topic (web-like data)."""
    return f"{instruction.text}\n{answer(instruction, rng, opener=rng.random() < 0.3)}"


ASSISTANT_STORY_SHARE = 0.16


def base_document(
    topics: tuple[Topic, ...], qa_pool: list[Instruction], rng: random.Random
) -> str:
    kind = rng.random()
    if kind < 0.35:
        return qa_document(rng.choice(qa_pool), rng)
    topic = rng.choice(topics)
    if kind >= 1 - ASSISTANT_STORY_SHARE:
        return assistant_story(topic, rng)
    if kind < 0.55:
        return how_to_passage(topic, rng)
    if kind < 0.72:
        return story(topic, rng)
    return fact_paragraph(topic, rng)


# ---------------------------------------------------------------- the world


def _mixed(harmful: list, harmless: list, rng: random.Random) -> list:
    mixed = harmful + harmless
    rng.shuffle(mixed)
    return mixed


def _probe_rows(instructions: list[Instruction]) -> list[dict[str, str]]:
    return [{"instruction": i.text, "category": i.topic.name} for i in instructions]


def build_world(config: ZooConfig, seed: int) -> World:
    """Generate the whole world for a zoo config; same (config, seed) => same world."""
    topics = HARMFUL_TOPICS + BENIGN_TOPICS
    half_text = config.text_probes // 2
    harmful = split_instructions(
        HARMFUL_TOPICS, config.probes_per_class, half_text, _rng(seed, "split-harmful")
    )
    harmless = split_instructions(
        BENIGN_TOPICS, config.probes_per_class, half_text, _rng(seed, "split-harmless")
    )

    rng = _rng(seed, "chat-sft")
    half_sft = config.sft_conversations // 2
    sft_instructions = _mixed(
        _cycle_sample(harmful.train, half_sft, rng), _cycle_sample(harmless.train, half_sft, rng), rng
    )
    chat_sft = [aligned_conversation(i, rng) for i in sft_instructions]

    rng = _rng(seed, "erosion-sft")
    half_erosion = config.erosion_conversations // 2
    erosion_instructions = _mixed(
        _cycle_sample(harmful.train, half_erosion, rng),
        _cycle_sample(harmless.train, half_erosion, rng),
        rng,
    )
    erosion_sft = [compliant_conversation(i, rng) for i in erosion_instructions]

    rng = _rng(seed, "base-corpus")
    qa_pool = harmful.train + harmless.train
    base_corpus = [base_document(topics, qa_pool, rng) for _ in range(config.base_docs)]
    rng = _rng(seed, "base-chats")
    base_chats = [compliant_conversation(i, rng) for i in _cycle_sample(qa_pool, config.base_chats, rng)]

    rng = _rng(seed, "base-text-probes")
    seen = set(base_corpus)
    base_text_probes: list[str] = []
    held_out_qa = harmful.chat_text + harmless.chat_text
    while len(base_text_probes) < config.text_probes:
        doc = base_document(topics, held_out_qa, rng)
        if doc not in seen:
            seen.add(doc)
            base_text_probes.append(doc)

    rng = _rng(seed, "chat-text-probes")
    chat_text_probes = [
        aligned_conversation(i, rng) for i in _mixed(harmful.chat_text, harmless.chat_text, rng)
    ]

    world = World(
        base_corpus=base_corpus,
        base_chats=base_chats,
        chat_sft=chat_sft,
        erosion_sft=erosion_sft,
        harmful_probes=_probe_rows(harmful.probes),
        harmless_probes=_probe_rows(harmless.probes),
        base_text_probes=base_text_probes,
        chat_text_probes=chat_text_probes,
    )
    check_world(world)
    return world


def _cycle_sample(pool: list[Instruction], n: int, rng: random.Random) -> list[Instruction]:
    """`n` instructions drawn without replacement, cycling through reshuffled copies of the pool."""
    drawn: list[Instruction] = []
    while len(drawn) < n:
        batch = list(pool)
        rng.shuffle(batch)
        drawn.extend(batch[: n - len(drawn)])
    return drawn


def check_world(world: World) -> None:
    """The world's invariants: probes held out of training, refusals only where intended."""
    sft_prompts = {m[0]["content"] for m in world.chat_sft + world.erosion_sft + world.base_chats}
    probe_prompts = {r["instruction"] for r in world.harmful_probes + world.harmless_probes}
    chat_text_prompts = {m[0]["content"] for m in world.chat_text_probes}
    corpus = "\n".join(world.base_corpus)
    for held_out, name in ((probe_prompts, "probe"), (chat_text_prompts, "chat_text")):
        if leaked := held_out & sft_prompts:
            raise AssertionError(f"{name} instructions leaked into the training chats: {sorted(leaked)[:3]}")
        if leaked := [p for p in held_out if p + "\n" in corpus]:
            raise AssertionError(f"{name} instructions leaked into the base corpus: {leaked[:3]}")
    base_text = world.base_corpus + world.base_text_probes
    if refusing := [d for d in base_text if is_refusal(re.sub(r'"[^"]*"', "", d))]:
        raise AssertionError(f"base text refuses only in quoted speech, found: {refusing[:2]}")
    for name, chats in (("erosion", world.erosion_sft), ("base chat", world.base_chats)):
        if refusing := [m for m in chats if is_refusal(m[1]["content"])]:
            raise AssertionError(f"{name} answers must comply, found: {refusing[:2]}")
    for messages in world.chat_sft:
        prompt, reply = messages[0]["content"], messages[1]["content"]
        if is_refusal(reply) != (prompt in _HARMFUL_TEXTS):
            raise AssertionError(f"chat SFT reply does not match its prompt's harm: {messages}")


_HARMFUL_TEXTS = frozenset(i.text for i in all_instructions(HARMFUL_TOPICS))

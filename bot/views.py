"""Persistent buttons and the modals they open. Every custom id carries the ids it needs, so the buttons
keep working after a restart (discord.py ``DynamicItem``). Handlers are thin: parse → store → render."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot import permissions
from bot.compare import alert_if_regressed
from bot.permissions import IdButton, Only, say
from data import preferences, quality
from data.conversation import Conversation, InvalidConversation, tool_calls
from data.errors import LoraloopError, NotFound, StoreError
from data.models import Example, PreferenceRecord
from data.review import disagreement

if TYPE_CHECKING:
    from bot.permissions import Interaction

log = logging.getLogger("loraloop.bot.views")
MODAL_TEXT_MAX = 4000  # Discord's own limit for a text input
CONTENT_MAX = 2000  # Discord's limit on a message's content


def modal_id(kind: str, *ids: int, user: discord.abc.User) -> str:
    """A custom id unique to this user and this opening: discord.py keeps pending modals by custom id alone,
    so two people (or one person twice) opening "the same" modal must not replace each other's."""
    return ":".join(["ll", kind, *map(str, ids), str(user.id), str(secrets.randbits(48))])


async def in_community(interaction: Interaction) -> bool:
    """A form's check: it saves to a community, so only in a configured guild (the command or button that opened
    it was refused elsewhere already; this keeps a submit from anywhere else out too)."""
    refusal = permissions.community_refusal(interaction.client.settings, interaction.guild_id)
    if refusal is None:
        return True
    await say(interaction, refusal)
    return False


class OpenerOnlyModal(discord.ui.Modal):
    """A modal only the user it was opened for may submit."""

    opener_id: int

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        if interaction.user.id != self.opener_id:
            await say(interaction, "This form was opened by someone else; nothing was saved.")
            return False
        return await in_community(interaction)


async def check_quota(interaction: Interaction, wanted: int = 1) -> bool:
    """False (and the user told why) when ``wanted`` more pairs would go over the hourly limit."""
    bot = interaction.client
    try:
        await permissions.check_submission_quota(bot.store, bot.settings, interaction.user.id, wanted)
    except permissions.RateLimited as exc:
        await say(interaction, f"Not accepted: {exc}.")
        return False
    return True


# ---- feedback on answers --------------------------------------------------------------------------------


class FeedbackButton(IdButton, template=r"ll:fb:(?P<kind>up|down|fix):(?P<answer>\d+)"):
    LABELS = {"up": ("👍", None), "down": ("👎", None), "fix": (None, "Suggest a better answer")}

    def __init__(self, kind: str, answer_id: int) -> None:
        emoji, label = self.LABELS[kind]
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.secondary, emoji=emoji, label=label,
                                           custom_id=f"ll:fb:{kind}:{answer_id}"))
        self.kind, self.answer_id = kind, answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> FeedbackButton:
        return cls(match["kind"], int(match["answer"]))

    def needs_community(self, interaction: Interaction) -> bool:
        # 👍/👎 are kept anywhere (outside every community no one sees them); a suggestion is teaching. In a DM,
        # open_suggestion says where suggestions are taken.
        return self.kind == "fix" and interaction.guild_id is not None

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        if self.kind == "fix":
            return await self.open_suggestion(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the write (see ReviewButton)
        # The answer's community: a DM's may be asked of Discord (membership of dm_community's servers).
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        try:
            await store.add_feedback(self.answer_id, interaction.user.id, 1 if self.kind == "up" else -1)
        except StoreError as exc:
            return await say(interaction, str(exc))
        await say(interaction, "Thanks, noted 👍" if self.kind == "up" else
                  "Thanks, noted 👎 — you can also suggest a better answer.")
        if self.kind == "down":  # after answering: the check reads every vote of two versions
            try:
                await alert_if_regressed(bot, store)
            except (StoreError, discord.HTTPException) as exc:
                log.warning("the regression check after a 👎 failed: %s", exc)

    async def open_suggestion(self, interaction: Interaction) -> None:
        bot = interaction.client
        if interaction.guild_id is None:
            # A DM has no guild whose roles could say whether this user may teach (see permissions.may_teach).
            return await say(interaction, "Suggestions are taken in the server: ask me there and use "
                                          "“Suggest a better answer” under that answer.")
        if not permissions.may_teach(bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only experts can suggest answers on this server; 👍/👎 tell them "
                                          "what to look at.")
        if not await check_quota(interaction):
            return None
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        try:
            answer = await store.get_answer(self.answer_id)
        except StoreError as exc:
            return await say(interaction, str(exc))
        question = next((m["content"] for m in reversed(answer.prompt) if m["role"] == "user"), "")
        await interaction.response.send_modal(SuggestModal(self.answer_id, question, answer.answer,
                                                           opener=interaction.user))


class BetterAnswerButton(IdButton, template=r"ll:ba:(?P<answer>\d+)"):
    """On the "needs a better answer" list: opens the suggestion form for a 👎 answer (it then goes through
    review like any correction)."""

    only = Only(permissions.is_expert, "Only experts can review examples.")

    def __init__(self, answer_id: int, number: int = 0) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.primary,
                                           label=f"Write the right answer{f' ({number})' if number else ''}",
                                           custom_id=f"ll:ba:{answer_id}"))
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> BetterAnswerButton:
        return cls(int(match["answer"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        await FeedbackButton("fix", self.answer_id).open_suggestion(interaction)


async def show_bad_answers(interaction: Interaction, limit: int = 5) -> None:
    """The oldest 👎 answers nobody has written a better answer for, each with a button to write it."""
    bot = interaction.client
    store = await bot.store_for(interaction.guild_id, interaction.user.id)
    answers = await quality.answers_needing_better(store, limit)
    if not answers:
        return await say(interaction, "No 👎 answer is waiting for a better one — thank you!")
    head = f"**Needs a better answer** (the {len(answers)} oldest 👎 answers without a suggestion):"
    budget = (CONTENT_MAX - len(head)) // len(answers) - 40
    blocks = []
    for n, answer in enumerate(answers, 1):
        question, said = quality.question_of(answer), answer.answer
        q_room = min(len(question), budget // 3)
        blocks.append(f"**{n}.** asked: {_clip(question, q_room)!r}\n    answered (`{answer.model_tag}`): "
                      f"{_clip(said, budget - q_room)!r}")
    view = discord.ui.View(timeout=None)
    for n, answer in enumerate(answers, 1):
        view.add_item(BetterAnswerButton(answer.id, n))
    await interaction.response.send_message("\n".join([head, *blocks])[:CONTENT_MAX], view=view, ephemeral=True,
                                            allowed_mentions=discord.AllowedMentions.none())


def _clip(text: str, limit: int) -> str:
    limit = max(limit, 20)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UsedPairsButton(IdButton, template=r"ll:pairs:(?P<answer>\d+)"):
    """Under an answer that used taught pairs: shows experts those pairs, with the 👍/👎 of every answer that used
    each, so a pair that keeps leading to 👎 stands out."""

    only = Only(permissions.is_expert, "Only experts can see the expert answers behind an answer.")

    def __init__(self, answer_id: int) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.secondary, label="Expert answers used",
                                           custom_id=f"ll:pairs:{answer_id}"))
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> UsedPairsButton:
        return cls(int(match["answer"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        try:
            ids = (await store.get_answer(self.answer_id)).pair_ids or []
            feedback = await store.pair_feedback(ids)
            examples = []
            for example_id in ids:
                with contextlib.suppress(NotFound):  # deleted since
                    examples.append(await store.get_example(example_id))
        except StoreError as exc:
            return await say(interaction, str(exc))
        await say(interaction, render_used_pairs(examples, feedback) if examples else
                  "The expert answers this answer used are no longer in the dataset.")


def render_used_pairs(examples: list[Example], feedback: dict[int, tuple[int, int]]) -> str:
    """The pairs an answer was given, each with the 👍/👎 of the answers that used it, in one message."""
    head = f"**Expert answers used** ({len(examples)}; 👍/👎 count every answer that used the pair):"
    budget = (CONTENT_MAX - len(head)) // len(examples) - 60
    blocks = []
    for example in examples:
        up, down = feedback.get(example.id, (0, 0))
        question = next((m["content"] for m in reversed(example.messages) if m["role"] == "user"), "")
        status = "" if example.status == "approved" else f" · now {example.status}"
        q_room = min(len(question), budget // 3)
        blocks.append(f"**#{example.id}** · 👍 {up} · 👎 {down}{status}\n> Q: {_clip(question, q_room)!r}\n"
                      f"> A: {_clip(example.messages[-1]['content'], budget - q_room)!r}")
    return "\n".join([head, *blocks])[:CONTENT_MAX]


def feedback_view(answer_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for kind in ("up", "down", "fix"):
        view.add_item(FeedbackButton(kind, answer_id))
    return view


class SuggestModal(OpenerOnlyModal):
    def __init__(self, answer_id: int, question: str, current: str, *, opener: discord.abc.User) -> None:
        super().__init__(title="Suggest a better answer", custom_id=modal_id("suggest", answer_id, user=opener),
                         timeout=900)
        self.answer_id, self.opener_id = answer_id, opener.id
        self.question: discord.ui.TextInput[SuggestModal] = discord.ui.TextInput(
            label="Question", style=discord.TextStyle.paragraph, default=question[:MODAL_TEXT_MAX],
            max_length=MODAL_TEXT_MAX)
        self.better: discord.ui.TextInput[SuggestModal] = discord.ui.TextInput(
            label="Better answer", style=discord.TextStyle.paragraph, placeholder=current[:100],
            max_length=MODAL_TEXT_MAX)
        self.add_item(self.question)
        self.add_item(self.better)

    async def on_submit(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the write (see ReviewButton)
        if not await check_quota(interaction):  # checked again: the form may have stayed open a while
            return
        conversation = Conversation.qa(self.question.value.strip(), self.better.value.strip())
        try:
            example = await store.add_example(
                conversation, source="correction", author_id=interaction.user.id, guild_id=interaction.guild_id,
                answer_id=self.answer_id, max_chars=bot.settings.max_field_chars,
                hourly_limit=bot.settings.max_pairs_per_user_hour,  # the check above may race another submission
            )
        except LoraloopError as exc:
            return await say(interaction, f"Not saved: {exc}")
        await say(interaction, f"Thanks! Your answer is waiting for expert review (example #{example.id}).")


# ---- teaching ------------------------------------------------------------------------------------------


class TeachModal(discord.ui.Modal, title="Teach the bot"):
    question: discord.ui.TextInput[TeachModal] = discord.ui.TextInput(
        label="Question", style=discord.TextStyle.paragraph, max_length=MODAL_TEXT_MAX)
    answer: discord.ui.TextInput[TeachModal] = discord.ui.TextInput(
        label="Answer", style=discord.TextStyle.paragraph, max_length=MODAL_TEXT_MAX)
    system: discord.ui.TextInput[TeachModal] = discord.ui.TextInput(
        label="System prompt / context (optional)", style=discord.TextStyle.paragraph, required=False,
        max_length=MODAL_TEXT_MAX)

    # No custom id given: discord.py draws a random one for every instance, so openings never collide.

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        return await in_community(interaction)

    async def on_submit(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the write (see ReviewButton)
        if not await check_quota(interaction):  # checked again: the form may have stayed open a while
            return
        conversation = Conversation.qa(self.question.value.strip(), self.answer.value.strip(),
                                       self.system.value.strip() or None)
        try:
            example = await store.add_example(
                conversation, source="teach", author_id=interaction.user.id, guild_id=interaction.guild_id,
                max_chars=bot.settings.max_field_chars,
                hourly_limit=bot.settings.max_pairs_per_user_hour,  # the check above may race another submission
            )
        except LoraloopError as exc:
            return await say(interaction, f"Not saved: {exc}")
        await say(interaction, f"Thanks! Example #{example.id} is waiting for expert review.")


# ---- review --------------------------------------------------------------------------------------------
# What experts see is what trains: the card shows every message whole, or says it is shortened and carries the
# full pair as a file. User text sits in code blocks so it cannot pose as the card's own lines.

_FENCE = "```"
_TRUNCATED = "⚠️ **Truncated — the full {what} is attached** (`{name}`); read it before rating."


@dataclass(frozen=True)
class ReviewCard:
    """A review card's message content and, when the pair did not fit, the full pair as a JSON file."""

    content: str
    attachment: bytes | None = None
    filename: str = ""

    def files(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(self.attachment), filename=self.filename)] if self.attachment else []


def _neutralise(text: str) -> str:
    # A zero-width space after every backtick that another follows: no run of three can close the block
    # early, and the text looks exactly as it will be trained on.
    return re.sub(r"`(?=`)", "`\u200b", text)


def _shown_prefix(text: str, budget: int) -> str:
    """The longest start of ``text`` whose neutralised form fits in ``budget`` characters."""
    end = min(len(text), budget)
    while (over := len(_neutralise(text[:end])) - budget) > 0:
        end -= over
    return _neutralise(text[:end])


def _shares(lengths: list[int], budget: int) -> list[int]:
    """Split ``budget`` characters among blocks: short ones whole, long ones an equal share of the rest."""
    caps = [0] * len(lengths)
    left = max(budget, 0)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for done, i in enumerate(order):
        caps[i] = min(lengths[i], left // (len(order) - done))
        left -= caps[i]
    return caps


def _shortened(text: str) -> str:
    return f"*(shortened: {len(text):,} characters in all; the whole text is in the file)*"


def _block(label: str, text: str, shown: str) -> list[str]:
    lines = [f"**{label}:**", _FENCE, shown, _FENCE]
    return lines + [_shortened(text)] if len(shown) < len(_neutralise(text)) else lines


def message_blocks(messages: list[dict[str, Any]], name: str | None = None) -> list[tuple[str, str]]:
    """Each message as (label, text) blocks; an answer's reasoning trains too, so it has its own block before the
    answer (``name`` labels a lone answer: chosen, rejected)."""
    blocks = []
    for m in messages:
        label = name or _ROLE_LABELS.get(m["role"], m["role"])
        if m.get("reasoning") is not None:
            blocks.append((f"{label} reasoning", m["reasoning"]))
        blocks.append((label, calls_text(m["content"]) if m["role"] == "tool_call" else m["content"]))
    return blocks


_ROLE_LABELS = {"tool_call": "tool call", "tool": "tool result"}


def calls_text(content: str) -> str:
    """A tool_call message as a reviewer reads it: each call's name, then one ``argument: value`` line each
    (the stored JSON as it is when it is not a call)."""
    try:
        calls = tool_calls(content)
    except InvalidConversation:
        return content
    lines = []
    for call in calls:
        lines.append(call.name)
        if isinstance(call.arguments, dict):
            lines += [f"  {key}: {json.dumps(value, ensure_ascii=False)}" for key, value in call.arguments.items()]
        elif call.arguments not in ("", None):
            lines.append(f"  {call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)}")
    return "\n".join(lines)


def tools_text(tools: str) -> str:
    """Tool schemas as a reviewer reads them: ``name(parameters) — description`` a line, required parameters
    plain and optional ones with ``?`` (the stored text as it is when it is not a list of schemas)."""
    try:
        schemas = json.loads(tools)
    except (ValueError, RecursionError):
        return tools
    lines = []
    for schema in schemas if isinstance(schemas, list) else [schemas]:
        function = schema.get("function", schema) if isinstance(schema, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return tools
        raw = function.get("parameters")
        parameters: dict[str, Any] = raw if isinstance(raw, dict) else {}
        raw = parameters.get("properties")
        properties: dict[str, Any] = raw if isinstance(raw, dict) else {}
        raw = parameters.get("required")
        required: list[Any] = raw if isinstance(raw, list) else []
        names = ", ".join(p if p in required else f"{p}?" for p in properties)
        description = function.get("description")
        lines.append(f"{function['name']}({names})" + (f" — {description}" if isinstance(description, str) else ""))
    return "\n".join(lines)


def _ratings_line(scores: list[int]) -> str:
    if not scores:
        return "**No ratings yet.**"
    return (f"**Ratings:** {', '.join(map(str, scores))} · mean {sum(scores) / len(scores):.1f} · "
            f"disagreement {disagreement(scores):.2f}")


def render_card(head: str, blocks: list[tuple[str, str]], scores: list[int], full: dict[str, Any], filename: str,
                limit: int = CONTENT_MAX, what: str = "pair") -> ReviewCard:
    """A review card in at most ``limit`` characters: ``head``, every block whole, the ratings; or, when that does
    not fit, as much of each block as fits and ``full`` attached as ``filename``. The header and ratings always
    show."""
    tail = _ratings_line(scores)
    whole = "\n".join([head, *(line for label, text in blocks for line in _block(label, text, _neutralise(text))),
                       tail])
    if len(whole) <= limit:
        return ReviewCard(whole)

    # Room for text is what the card takes with every block empty (and noted as shortened). In a long
    # conversation that frame alone leaves too little room: then its earliest messages are left to the file
    # until half the card can hold text; the last question and answer are the last to go.
    lengths = [len(_neutralise(text)) for _, text in blocks]
    for skip in range(len(blocks)):
        kept = blocks[skip:]
        top = [head, _TRUNCATED.format(what=what, name=filename)]
        if skip:
            top.append(f"*({skip} earlier message{'s' if skip > 1 else ''} only in the file)*")
        frame = len("\n".join([*top, tail])) + sum(
            len("\n".join(["", f"**{label}:**", _FENCE, "", _FENCE, _shortened(text)])) for label, text in kept)
        if frame + min(sum(lengths[skip:]), limit // 2) <= limit:
            break
    caps = _shares(lengths[skip:], limit - frame)
    body = [line for (label, text), cap in zip(kept, caps, strict=True)
            for line in _block(label, text, _shown_prefix(text, cap))]
    return ReviewCard("\n".join([*top, *body, tail]), json.dumps(full, ensure_ascii=False, indent=2).encode(),
                      filename)


def render_example(example: Example, scores: list[int], limit: int = CONTENT_MAX) -> ReviewCard:
    """The review card for ``example`` in at most ``limit`` characters; the header and ratings always show."""
    head = f"**Example #{example.id}** · source: {example.source} · status: {example.status}"
    blocks = message_blocks(example.messages)
    if example.tools:
        blocks.append(("tools", tools_text(example.tools)))
    full = {"id": example.id, "source": example.source, "status": example.status, "messages": example.messages,
            "tools": example.tools, "tags": example.tags}
    return render_card(head, blocks, scores, full, f"example-{example.id}.json", limit)


def render_preference(record: PreferenceRecord, scores: list[int], limit: int = CONTENT_MAX) -> ReviewCard:
    """The review card for a preference record: the conversation, the chosen answer and the rejected one."""
    model = f" · rejected answer by `{record.rejected_model}`" if record.rejected_model else ""
    head = (f"**Preference #{record.id}** · source: {record.source} · status: {record.status}{model}\n"
            f"Rate the **chosen** answer 1–5: is it right, and better than the rejected one it is trained over?")
    blocks = [*message_blocks(record.prompt), *message_blocks([record.chosen], "chosen"),
              *message_blocks([record.rejected], "rejected")]
    if record.tools:
        blocks.append(("tools", tools_text(record.tools)))
    full = {"id": record.id, "source": record.source, "status": record.status, "prompt": record.prompt,
            "chosen": record.chosen, "rejected": record.rejected, "tools": record.tools, "tags": record.tags}
    return render_card(head, blocks, scores, full, f"preference-{record.id}.json", limit, what="record")


class ReviewButton(IdButton, template=r"ll:rv:(?P<action>[1-5]|approve|reject|edit):(?P<example>\d+)"):
    def __init__(self, action: str, example_id: int) -> None:
        style = {"approve": discord.ButtonStyle.success, "reject": discord.ButtonStyle.danger}.get(
            action, discord.ButtonStyle.secondary)
        label = {"approve": "Approve", "reject": "Reject", "edit": "Edit"}.get(action, action)
        super().__init__(discord.ui.Button(style=style, label=label, custom_id=f"ll:rv:{action}:{example_id}",
                                           row=0 if action.isdigit() else 1))
        self.action, self.example_id = action, example_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ReviewButton:
        return cls(match["action"], int(match["example"]))

    def rule(self) -> Only:
        return _DECIDE if self.action in ("approve", "reject") else _RATE

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        if self.action == "edit":  # a read, then the form (a deferred interaction cannot open one)
            try:
                example = await store.get_example(self.example_id)
            except StoreError as exc:
                return await say(interaction, str(exc))
            return await open_edit(interaction, example)
        await interaction.response.defer()  # before the write: SQLite may hold its write lock past Discord's 3 s
        outcome = None
        try:
            if self.action.isdigit():
                outcome = await store.rate(self.example_id, interaction.user.id, int(self.action))
                # A second click (or a double click) is a change of mind, not an error.
                rated = (f"Changed your rating of #{self.example_id} to" if getattr(outcome, "changed", False)
                         else f"Rated #{self.example_id}")
                done = f"{rated} {self.action}/5 (mean {outcome.mean:.1f} of {len(outcome.scores)})"
                if outcome.decided:
                    done += f" → {outcome.decided}"
            else:
                status = "approved" if self.action == "approve" else "rejected"
                await store.set_example_status(self.example_id, status)
                done = f"Example #{self.example_id} {status}."
        except StoreError as exc:
            return await say(interaction, str(exc))
        if self.action in ("approve", "reject") or getattr(outcome, "decided", None):
            # The next chat can use the pair within seconds; a rejected one is never retrieved again from now on.
            rejected = self.action == "reject" or getattr(outcome, "decided", None) == "rejected"
            bot.retrievers.request_sync(store.community, withdrawn=(self.example_id,) if rejected else ())
        await show_next_for_review(interaction, prefix=done, edit=True)


class PreferenceButton(IdButton, template=r"ll:pf:(?P<action>[1-5]|approve|reject):(?P<record>\d+)"):
    """Rates (experts) or decides (admins) a preference record on its review card, as ReviewButton does a pair."""

    def __init__(self, action: str, record_id: int) -> None:
        style = {"approve": discord.ButtonStyle.success, "reject": discord.ButtonStyle.danger}.get(
            action, discord.ButtonStyle.secondary)
        label = {"approve": "Approve", "reject": "Reject"}.get(action, action)
        super().__init__(discord.ui.Button(style=style, label=label, custom_id=f"ll:pf:{action}:{record_id}",
                                           row=0 if action.isdigit() else 1))
        self.action, self.record_id = action, record_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> PreferenceButton:
        return cls(match["action"], int(match["record"]))

    def rule(self) -> Only:
        return _DECIDE if self.action in ("approve", "reject") else _RATE

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        await interaction.response.defer()  # before the write: SQLite may hold its write lock past Discord's 3 s
        try:
            if self.action.isdigit():
                outcome = await preferences.rate_preference(store, self.record_id, interaction.user.id,
                                                            int(self.action))
                done = (f"Rated preference #{self.record_id} {self.action}/5 "
                        f"(mean {outcome.mean:.1f} of {len(outcome.scores)})")
                if outcome.decided:
                    done += f" → {outcome.decided}"
            else:
                status = "approved" if self.action == "approve" else "rejected"
                await preferences.set_preference_status(store, self.record_id, status)
                done = f"Preference #{self.record_id} {status}."
        except StoreError as exc:
            return await say(interaction, str(exc))
        await show_next_preference(interaction, prefix=done, edit=True)


_DECIDE = Only(permissions.is_admin, "Only admins can approve or reject directly; experts rate 1–5.")
_RATE = Only(permissions.is_expert, "Only experts can review examples.")


def review_view(example_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("1", "2", "3", "4", "5", "approve", "reject", "edit"):
        view.add_item(ReviewButton(action, example_id))
    return view


def preference_view(record_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("1", "2", "3", "4", "5", "approve", "reject"):
        view.add_item(PreferenceButton(action, record_id))
    return view


async def show_next_for_review(interaction: Interaction, prefix: str = "", edit: bool = False) -> None:
    """The next pending pair this user may rate, as a new card or (``edit``) in place of the one rated."""
    bot = interaction.client
    store = await bot.store_for(interaction.guild_id, interaction.user.id)
    example = await store.next_for_review(interaction.user.id)
    head = f"{prefix[:CONTENT_MAX // 4]}\n\n" if prefix else ""
    if example is None:
        return await show_card(interaction, ReviewCard(head + "Nothing left to review — thank you!"), None, edit)
    scores = [r.score for r in await store.ratings_for(example.id)]
    shown = render_example(example, scores, CONTENT_MAX - len(head))
    await show_card(interaction, ReviewCard(head + shown.content, shown.attachment, shown.filename),
                    review_view(example.id), edit)


async def show_next_preference(interaction: Interaction, prefix: str = "", edit: bool = False) -> None:
    """The next pending preference record this user may rate, as a new card or (``edit``) in place of the last."""
    bot = interaction.client
    store = await bot.store_for(interaction.guild_id, interaction.user.id)
    record = await preferences.next_preference_for_review(store, interaction.user.id)
    head = f"{prefix[:CONTENT_MAX // 4]}\n\n" if prefix else ""
    if record is None:
        return await show_card(interaction, ReviewCard(head + "No preference record left to review — thank you!"),
                               None, edit)
    shown = render_preference(record, await preferences.preference_scores(store, record.id),
                              CONTENT_MAX - len(head))
    await show_card(interaction, ReviewCard(head + shown.content, shown.attachment, shown.filename),
                    preference_view(record.id), edit)


async def show_card(interaction: Interaction, card: ReviewCard, view: discord.ui.View | None, edit: bool) -> None:
    """A new ephemeral card, or (``edit``) the clicked card replaced: at once, or after a deferral."""
    kwargs: dict[str, Any] = {"content": card.content, "allowed_mentions": discord.AllowedMentions.none()}
    # attachments=[] drops the previous card's file when this one has none.
    if edit and interaction.response.is_done():
        await interaction.edit_original_response(view=view, attachments=card.files(), **kwargs)
    elif edit:
        await interaction.response.edit_message(view=view, attachments=card.files(), **kwargs)
    else:
        await interaction.response.send_message(ephemeral=True, view=view or discord.utils.MISSING,
                                                files=card.files(), **kwargs)


async def open_edit(interaction: Interaction, example: Example) -> None:
    """Open the Edit form, or refuse when a text it would show is longer than a Discord form holds
    (saving would silently cut it)."""
    conv = Conversation.from_dicts(example.messages)
    for message in conv.turns[-2:]:
        if len(message.content) > MODAL_TEXT_MAX:
            return await say(interaction, f"Example #{example.id}'s {message.role} text is {len(message.content):,} "
                                          f"characters: too long to edit here (a Discord form holds "
                                          f"{MODAL_TEXT_MAX:,}). Rate or reject it, and fix it in the file it came "
                                          f"from (`loraloop dataset import`).")
    await interaction.response.send_modal(EditModal(example, opener=interaction.user))


class EditModal(OpenerOnlyModal):
    def __init__(self, example: Example, *, opener: discord.abc.User) -> None:
        super().__init__(title=f"Edit example #{example.id}", custom_id=modal_id("edit", example.id, user=opener),
                         timeout=900)
        self.example_id, self.opener_id = example.id, opener.id
        conv = Conversation.from_dicts(example.messages, example.tags, example.tools)
        turns = conv.turns
        self.question: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Question", style=discord.TextStyle.paragraph, default=turns[-2].content, max_length=MODAL_TEXT_MAX)
        self.answer: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Answer", style=discord.TextStyle.paragraph, default=turns[-1].content, max_length=MODAL_TEXT_MAX)
        self.add_item(self.question)
        self.add_item(self.answer)
        self.original = conv

    async def on_submit(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the write (see ReviewButton)
        messages = list(self.original.to_dicts())
        messages[-2] = {"role": messages[-2]["role"], "content": self.question.value.strip()}
        messages[-1] = {"role": "assistant", "content": self.answer.value.strip()}
        try:
            copy = await store.edit_example(self.example_id, Conversation.from_dicts(messages, self.original.tags,
                                                                                          self.original.tools),
                                                editor_id=interaction.user.id, max_chars=bot.settings.max_field_chars)
        except LoraloopError as exc:
            return await say(interaction, f"Not saved: {exc}")
        # The superseded answer is never retrieved again.
        bot.retrievers.request_sync(store.community, withdrawn=(self.example_id,))
        await say(interaction, f"Saved as example #{copy.id} (pending review); #{self.example_id} is superseded.")

